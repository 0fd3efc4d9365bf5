//! How a VM ends: reboot, poweroff, panic, restart in place, signals, a
//! closed stdout, several vCPUs, and many VMs at once.

mod common;
use common::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn guest_reboot_exits_0() {
    let r = kvmini(&["--cmdline", "reboot"]);
    assert_eq!(r.stdout_str(), "rebooting\n");
    assert_eq!(r.status, Some(0));
    assert_eq!(
        r.last_stderr_line(),
        "kvmini: guest rebooted (exit status 0)"
    );
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn acpi_poweroff_exits_0() {
    let r = kvmini(&["--cmdline", "poweroff"]);
    assert_eq!(r.stdout_str(), "powering off\n");
    assert_eq!(r.status, Some(0));
    assert_eq!(
        r.last_stderr_line(),
        "kvmini: guest powered off (exit status 0)"
    );
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn panic_banner_then_reboot_is_a_panic() {
    let r = kvmini(&["--cmdline", "panic"]);
    assert!(r.stdout_str().starts_with("Kernel panic - not syncing"));
    assert_eq!(r.status, Some(6));
    assert_eq!(
        r.last_stderr_line(),
        "kvmini: guest kernel panicked (exit status 6)"
    );
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn on_reboot_restart_boots_again() {
    let r = kvmini(&[
        "--cmdline",
        "reboot",
        "--on-reboot",
        "restart",
        "--timeout",
        "3s",
    ]);
    let boots = r.stdout_str().matches("rebooting\n").count();
    assert!(boots >= 2, "booted {boots} times: {}", r.stderr);
    assert_eq!(r.status, Some(5));
}

/// The tiny guest as a file, for `--kernel`.
const GUEST: &str = concat!(env!("OUT_DIR"), "/kvmini-guest.elf");

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn a_reboot_in_place_starts_as_fresh_as_the_first_boot() {
    // `fresh` marks guest memory, an MSR and the UART's scratch register,
    // then reboots; a mark still there at the next boot makes it exit 3.
    // Without the irqchip, with it (the chips are reset too), with two
    // vCPUs, and from files (loaded again from the files kept open, under
    // the restart seccomp filter).
    let cases: &[&[&str]] = &[
        &[],
        &["--irqchip", "on"],
        &["--cpus", "2"],
        &["--kernel", GUEST, "--initramfs", GUEST],
    ];
    for extra in cases {
        let mut args = vec![
            "--cmdline",
            "fresh",
            "--on-reboot",
            "restart",
            "--timeout",
            "2s",
        ];
        args.extend_from_slice(extra);
        let r = kvmini(&args);
        let out = r.stdout_str();
        let boots = out.matches("fresh boot\n").count();
        assert!(!out.contains("stale"), "{extra:?}: {out}");
        assert!(boots >= 3, "{extra:?}: booted {boots} times: {}", r.stderr);
        assert_eq!(r.status, Some(5), "{extra:?}: {}", r.stderr);
    }
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn several_vcpus_boot_and_every_thread_is_joined() {
    for cpus in ["2", "4", "16"] {
        let r = kvmini(&["--cpus", cpus]);
        assert_eq!(r.status, Some(0), "--cpus {cpus}: {}", r.stderr);
        assert!(r.stdout_str().starts_with("kvmini tiny guest\n"));
    }
    // The boot vCPU spins while the others wait for a SIPI: the timeout
    // must still stop and join them all.
    let r = kvmini(&["--cpus", "4", "--cmdline", "spin", "--timeout", "1s"]);
    assert_eq!(r.status, Some(5));
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn boot_trace_shows_the_timeline_and_post_codes() {
    let r = kvmini(&["--cmdline", "post", "--boot-trace"]);
    assert_eq!(r.status, Some(0));
    let lines: Vec<&str> = r.stderr.lines().collect();
    let pos = |what: &str| {
        lines
            .iter()
            .position(|l| l.ends_with(what))
            .unwrap_or_else(|| panic!("no {what:?} in {}", r.stderr))
    };
    assert!(pos("process start") < pos("VM ready"));
    assert!(pos("VM ready") < pos("first guest exit"));
    assert!(pos("POST code 0x01") < pos("POST code 0x02"));
    assert!(pos("POST code 0x03") < pos("VM stopped"));
}

/// Starts kvmini with `args`, waits until the guest has produced output,
/// sends `signal`, returns status, stdout and stderr.
fn signalled(args: &[&str], signal: i32) -> (Option<i32>, Vec<u8>, String) {
    let mut child = Command::new(KVMINI)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    out.read_exact(&mut first).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let mut all = first.to_vec();
    all.extend(rest);
    (status.code(), all, err)
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn sigterm_and_sigint_stop_the_vm_with_their_status() {
    for (sig, status, name) in [
        (libc::SIGTERM, 143, "SIGTERM"),
        (libc::SIGINT, 130, "SIGINT"),
    ] {
        let (code, out, err) = signalled(&["--cmdline", "flood=100000000", "--cpus", "2"], sig);
        assert_eq!(code, Some(status), "{err}");
        assert!(err.ends_with(&format!(
            "stopped by signal {name} (exit status {status})\n"
        )));
        // Everything the guest wrote before the signal arrived intact, and
        // the line the signal cut ended by kvmini.
        assert_eq!(out.last(), Some(&b'\n'), "{name}: the cut line is ended");
        assert!(is_cut_flood(&out), "{name}: output corrupted");
    }
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn closed_stdout_does_not_panic() {
    let mut child = Command::new(KVMINI)
        .args(["--cmdline", "flood=20000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut some = [0u8; 10];
    out.read_exact(&mut some).unwrap();
    drop(out); // the reader goes away, as with `kvmini | head -c 10`
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(status.code(), Some(0), "{err}");
}

/// 50 VMs at once, each flooding its own seeded pattern, half to pipes and
/// half to `--serial file=`: every transcript is byte-exact.
#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn fifty_concurrent_floods_are_byte_exact() {
    const VMS: u64 = 50;
    const BYTES: usize = 4000;
    let dir = TempDir::new("fifty");
    let start = Instant::now();
    let children: Vec<_> = (0..VMS)
        .map(|seed| {
            let mut cmd = Command::new(KVMINI);
            cmd.args([
                "--cmdline",
                &format!("flood={BYTES} seed={seed}"),
                "--timeout",
                "300s",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            if seed % 2 == 1 {
                cmd.arg("--serial")
                    .arg(format!("file={}", dir.path(&seed.to_string()).display()));
            }
            (seed, cmd.spawn().unwrap())
        })
        .collect();
    for (seed, child) in children {
        let o = child.wait_with_output().unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "seed {seed}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let got = if seed % 2 == 1 {
            assert!(o.stdout.is_empty());
            std::fs::read(dir.path(&seed.to_string())).unwrap()
        } else {
            o.stdout
        };
        assert!(
            got == flood_pattern(BYTES, seed),
            "seed {seed}: transcript differs"
        );
    }
    assert!(start.elapsed() < Duration::from_secs(600));
}

/// A reader that never reads: the pipe fills, the guest waits for it, and
/// kvmini still sees its timeout and signals.
#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn stdout_pipe_nobody_reads_does_not_hang_kvmini() {
    let mut child = Command::new(KVMINI)
        .args(["--cmdline", "flood=100000000", "--timeout", "3s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "kvmini hung on a full stdout pipe"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(5));
    // The pipe holds the first bytes, byte-exact (and, where the guest is
    // slow enough that they all fit, the newline ending the cut line).
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    assert!(!out.is_empty());
    assert!(is_cut_flood(&out), "output corrupted");
}
