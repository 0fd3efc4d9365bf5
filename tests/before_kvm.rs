//! Bad input is status 2 before /dev/kvm is opened: each case runs where
//! /dev/kvm is not KVM at all (a mount namespace with /dev/null bound over
//! it; for a user other than root inside a user namespace too, so no root
//! is needed), where anything that reached KVM would end with status 3
//! instead. Needs no KVM.

mod common;
use common::*;
use std::process::{Command, Stdio};

/// Runs kvmini with `args` where /dev/kvm is /dev/null; (status, stderr).
fn without_kvm(args: &[&str]) -> (Option<i32>, String) {
    // Root needs no user namespace (and cannot make one in a chroot, as
    // scripts/nested-ci runs the tests); anyone else does.
    // SAFETY: geteuid only reads the process's credentials.
    let ns = if unsafe { libc::geteuid() } == 0 {
        "-m"
    } else {
        "-rm"
    };
    let script =
        "[ -e /dev/kvm ] || touch /dev/kvm; mount --bind /dev/null /dev/kvm && exec \"$@\"";
    let out = Command::new("unshare")
        .args([ns, "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(KVMINI)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run unshare(1) from util-linux");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("unshare:") && !stderr.contains("mount:"),
        "this test needs a mount namespace (unshare {ns}): {stderr}"
    );
    (out.status.code(), stderr)
}

#[test]
fn the_namespace_hides_kvm() {
    // The control: good input does reach KVM there, and fails as status 3.
    let (status, stderr) = without_kvm(&["--cmdline", "exit=0"]);
    assert_eq!(status, Some(3), "{stderr}");
}

#[test]
fn bad_input_is_found_before_kvm_is_opened() {
    let dir = TempDir::new("before-kvm");
    let garbage = dir.path("garbage");
    std::fs::write(&garbage, b"this is no kernel at all, just text").unwrap();
    let empty = dir.path("empty");
    std::fs::write(&empty, b"").unwrap();
    let missing = dir.path("missing");
    let d = dir.0.to_str().unwrap();
    let g = garbage.to_str().unwrap();
    let e = empty.to_str().unwrap();
    let m = missing.to_str().unwrap();
    let no_dir_log = format!("{m}/sub/log");
    let small = dir.path("small.img");
    std::fs::write(&small, [0u8; 100]).unwrap();
    let odd = dir.path("odd.img");
    std::fs::write(&odd, [0u8; 1000]).unwrap();
    let big = dir.path("big.img");
    std::fs::write(&big, [0u8; 4096]).unwrap();
    let (small, odd) = (small.to_str().unwrap(), odd.to_str().unwrap());
    let big = big.to_str().unwrap();
    let tagged = format!("{d},tag=t");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--kernel", m], "--kernel"),
        (vec!["--kernel", d], "is a directory"),
        (vec!["--kernel", g], "not a kernel image"),
        (vec!["--kernel", e], "the file is empty"),
        (vec!["--initramfs", m], "--initramfs"),
        (vec!["--initramfs", d], "is a directory"),
        (vec!["--cpus", "2", "--irqchip", "off"], "--cpus 2"),
        (vec!["--serial2", "stdio"], "--serial2 stdio"),
        (vec!["--until", "("], "--until"),
        (vec!["--fail-on", "[z-a]"], "--fail-on"),
        (vec!["--input", m], "--input"),
        (vec!["--serial-log", &no_dir_log], "--serial-log"),
        (
            vec!["--serial", "file=/nonexistent-dir/x"],
            "--serial file=",
        ),
        (vec!["--disk", m], "--disk"),
        (vec!["--disk", d], "is a directory"),
        (vec!["--disk", small], "smaller than one 512-byte sector"),
        (vec!["--disk", odd], "not a multiple of 512"),
        (
            vec!["--disk", big, "--disk", big],
            "the same image is given twice",
        ),
        (vec!["--share", m], "--share"),
        (vec!["--share", g], "not a directory"),
        (
            vec!["--share", &tagged, "--share", &tagged],
            "tag=t is already another share's",
        ),
    ];
    for (args, names) in cases {
        let (status, stderr) = without_kvm(&args);
        assert_eq!(status, Some(2), "{args:?}: {stderr}");
        let last = stderr.lines().last().unwrap_or("");
        assert!(
            last.starts_with("kvmini: error: ") && last.contains(names),
            "{args:?} should name {names:?}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
    }
}
