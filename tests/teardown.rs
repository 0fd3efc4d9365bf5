//! The VM's destruction happens after kvmini has exited, in a helper
//! (src/teardown.rs): the helper must hold nothing the caller can see and
//! must not outlive the VM.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GUEST: &str = concat!(env!("OUT_DIR"), "/kvmini-guest.elf");

/// Processes whose environment carries `tag` (the helper inherits it).
fn tagged(tag: &str) -> Vec<u32> {
    let needle = format!("KVMINI_TEST_TAG={tag}");
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(env) = std::fs::read(e.path().join("environ")) {
            if env.split(|&b| b == 0).any(|v| v == needle.as_bytes()) {
                found.push(pid);
            }
        }
    }
    found
}

/// The child's exit status, killing it if it runs past `limit`.
fn wait_deadline(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kvmini ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn the_teardown_helper_holds_no_output_and_goes_with_the_vm() {
    let tag = format!("{}-{:?}", std::process::id(), Instant::now());
    // --irqchip on: the case the helper is for.
    let mut child = Command::new(KVMINI)
        .args(["--kernel", GUEST, "--cmdline", "hello", "--irqchip", "on"])
        .env("KVMINI_TEST_TAG", &tag)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let kvmini_pid = child.id();
    // kvmini's stdout must reach its end when kvmini exits: a helper that
    // kept a copy would hold it open.
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut out);
        let _ = tx.send(out);
    });
    let status = wait_deadline(&mut child, Duration::from_secs(20));
    assert_eq!(status, Some(0));
    let out = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("kvmini's stdout stayed open after it exited");
    assert!(String::from_utf8_lossy(&out).contains("cmdline: hello"));
    // Whatever is left with the tag is the helper (kvmini itself is gone).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left: Vec<u32> = tagged(&tag)
            .into_iter()
            .filter(|&p| p != kvmini_pid)
            .collect();
        if left.is_empty() {
            break;
        }
        for pid in &left {
            // Anything it still holds is a socket or a KVM object, never
            // one of the caller's streams or files.
            if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
                for fd in fds.flatten() {
                    let target = std::fs::read_link(fd.path()).unwrap_or_default();
                    let t = target.to_string_lossy();
                    assert!(
                        t.starts_with("socket:") || t.starts_with("anon_inode:kvm-vm"),
                        "the teardown helper {pid} holds {t}"
                    );
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the teardown helper {left:?} outlived kvmini by 20 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn a_guest_rebooted_in_place_leaves_no_helper_behind() {
    // Each boot is a new VM handed to the same helper, which destroys the
    // previous one; all of them are gone once kvmini is.
    let tag = format!("r{}-{:?}", std::process::id(), Instant::now());
    let dir = TempDir::new("teardown");
    let log = dir.path("out");
    let mut child = Command::new(KVMINI)
        .args([
            "--kernel",
            GUEST,
            "--cmdline",
            "reboot",
            "--irqchip",
            "on",
            "--on-reboot",
            "restart",
            "--timeout",
            "1s",
        ])
        .env("KVMINI_TEST_TAG", &tag)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert_eq!(wait_deadline(&mut child, Duration::from_secs(20)), Some(5));
    let out = std::fs::read_to_string(&log).unwrap();
    let boots = out.matches("rebooting").count();
    assert!(boots >= 2, "only {boots} boots in 1 s");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !tagged(&tag).is_empty() {
        assert!(
            Instant::now() < deadline,
            "a teardown helper outlived kvmini"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
