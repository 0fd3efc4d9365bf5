//! `--disk`: the tiny guest's virtio-blk driver (`blk` mode) against real
//! images, with the host checking the image's bytes afterwards.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

/// What the tiny guest writes to sector 1 (guest/src/blk.rs).
const PATTERN: &[u8] = b"kvmini blk pattern, sector one. ";

fn image(dir: &TempDir, name: &str, sectors: usize) -> (String, Vec<u8>) {
    let mut bytes: Vec<u8> = (0..sectors * 512).map(|i| (i % 251) as u8).collect();
    bytes[..16].copy_from_slice(b"BOOTSECTOR-DATA!");
    let p = dir.path(name);
    std::fs::write(&p, &bytes).unwrap();
    (p.to_str().unwrap().to_string(), bytes)
}

fn sector1() -> Vec<u8> {
    (0..512).map(|i| PATTERN[i % PATTERN.len()]).collect()
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn the_guest_reads_writes_and_flushes_its_disk() {
    let dir = TempDir::new("disk-rw");
    let (a, before) = image(&dir, "a.img", 16);
    for irqchip in ["off", "on"] {
        std::fs::write(&a, &before).unwrap();
        let r = kvmini(&[
            "--disk",
            &a,
            "--cmdline",
            "blk",
            "--irqchip",
            irqchip,
            "--timeout",
            "20s",
        ]);
        assert_eq!(r.status, Some(0), "{}", r.stderr);
        assert_eq!(
            r.stdout_str(),
            "blk: capacity 16 sectors\nblk: sector 0: BOOTSECTOR-DATA!\n\
             blk: sector 1 written, flushed and read back\nblk: read past the end refused\n"
        );
        let after = std::fs::read(&a).unwrap();
        assert_eq!(after[512..1024], sector1()[..], "sector 1 on the host");
        assert_eq!(after[..512], before[..512], "sector 0 untouched");
        assert_eq!(after[1024..], before[1024..], "sectors 2.. untouched");
    }
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn a_read_only_disk_refuses_the_guests_writes() {
    let dir = TempDir::new("disk-ro");
    let (a, before) = image(&dir, "a.img", 4);
    let r = kvmini(&[
        "--disk",
        &format!("{a},ro"),
        "--cmdline",
        "blk",
        "--timeout",
        "20s",
    ]);
    assert_eq!(r.status, Some(0), "{}", r.stderr);
    assert!(
        r.stdout_str().ends_with("blk: read-only, write refused\n"),
        "{}",
        r.stdout_str()
    );
    assert_eq!(std::fs::read(&a).unwrap(), before);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn disks_are_in_order_and_only_the_first_is_written() {
    let dir = TempDir::new("disk-two");
    let (a, _) = image(&dir, "a.img", 8);
    let (b, b_before) = image(&dir, "b.img", 32);
    let r = kvmini(&[
        "--disk",
        &a,
        "--disk",
        &b,
        "--cmdline",
        "blk",
        "--timeout",
        "20s",
    ]);
    assert_eq!(r.status, Some(0), "{}", r.stderr);
    // The guest's driver takes the first device: /dev/vda is the first --disk.
    assert!(
        r.stdout_str().starts_with("blk: capacity 8 sectors\n"),
        "{}",
        r.stdout_str()
    );
    assert_eq!(std::fs::read(&a).unwrap()[512..1024], sector1()[..]);
    assert_eq!(std::fs::read(&b).unwrap(), b_before);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn a_second_vm_cannot_open_an_image_in_use() {
    let dir = TempDir::new("disk-lock");
    let (a, _) = image(&dir, "a.img", 4);
    let mut first = Command::new(KVMINI)
        .args(["--disk", &a, "--cmdline", "echo", "--timeout", "30s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The first VM holds the lock once its guest runs.
    let mut out = BufReader::new(first.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "echo ready\n");
    for (args, want) in [
        (vec!["--disk", a.as_str()], 2),
        (vec!["--disk", &format!("{a},ro")], 2),
    ] {
        let r = kvmini(&args);
        assert_eq!(r.status, Some(want), "{args:?}: {}", r.stderr);
        assert!(
            r.last_stderr_line().contains("in use by another process"),
            "{}",
            r.stderr
        );
    }
    let mut stdin = first.stdin.take().unwrap();
    stdin.write_all(b"\x04").unwrap();
    drop(stdin);
    assert_eq!(first.wait().unwrap().code(), Some(0));
    // Released with the VM.
    let r = kvmini(&["--disk", &a, "--cmdline", "exit=0"]);
    assert_eq!(r.status, Some(0), "{}", r.stderr);
}
