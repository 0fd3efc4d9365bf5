//! A careless or hostile host: resource limits, files that block, sockets
//! in use. kvmini must end each case with its documented status and one
//! `kvmini:` line, never a signal, a hang or a backtrace.

mod common;
use common::*;
use std::process::Command;

/// Runs `kvmini ARGS` under `ulimit -v KIB` (address space, KiB).
fn under_address_limit(kib: u64, args: &str) -> Run {
    Command::new("sh")
        .args(["-c", &format!("ulimit -v {kib} && exec {KVMINI} {args}")])
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
        .into()
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn running_out_of_address_space_is_status_1_with_one_line_on_every_thread() {
    let dir = TempDir::new("oom");
    let log = dir.path("serial.log");
    let args = format!(
        "--memory 16M --serial-log '{}' --cmdline exit=0",
        log.display()
    );
    // The smallest limit (KiB) under which the VM runs to its end: found by
    // bisection, so the test follows the binary's size as it changes.
    let (mut lo, mut hi) = (1024u64, 1 << 20);
    assert_eq!(
        under_address_limit(hi, &args).status,
        Some(0),
        "1 GiB must do"
    );
    while hi - lo > 16 {
        let mid = (lo + hi) / 2;
        if under_address_limit(mid, &args).status == Some(0) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    // Below it, allocations fail one after another, on the main thread, the
    // vCPU's and the console's: every one must end the same clean way.
    let mut out_of_memory = 0;
    for kib in (hi.saturating_sub(3000)..hi).step_by(25) {
        let r = under_address_limit(kib, &args);
        r.assert_no_panic();
        // When a new thread's first allocation fails, std prints its own
        // "memory allocation of N bytes failed" before kvmini's line (seen
        // in one limit of a hundred); the line after it is kvmini's.
        let lines: Vec<&str> = r
            .stderr
            .lines()
            .filter(|l| !(l.starts_with("memory allocation of ") && l.ends_with(" bytes failed")))
            .collect();
        match r.status {
            Some(0) => {}
            Some(1) => {
                assert_eq!(lines.len(), 1, "ulimit -v {kib}: {}", r.stderr);
                assert!(lines[0].starts_with("kvmini: error: "), "{}", r.stderr);
                out_of_memory += usize::from(lines[0].contains("out of memory"));
            }
            // Guest memory itself could not be mapped: the flag's fault.
            Some(2) => {
                assert_eq!(lines.len(), 1, "ulimit -v {kib}: {}", r.stderr);
                assert!(
                    lines[0].starts_with("kvmini: error: --memory: "),
                    "{}",
                    r.stderr
                );
            }
            other => panic!("ulimit -v {kib}: status {other:?}: {}", r.stderr),
        }
    }
    assert!(
        out_of_memory > 0,
        "no limit below {hi} KiB made a heap allocation fail"
    );
}

fn mkfifo(dir: &TempDir, name: &str) -> String {
    let p = dir.path(name);
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string; mkfifo creates the node or fails.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    p.display().to_string()
}

/// Runs kvmini, killing it (and failing) if it is still running after
/// `limit`: a blocked kvmini must fail the test, not hang it.
fn kvmini_within(args: &[&str], limit: std::time::Duration, term_after: Option<u64>) -> Run {
    let mut child = Command::new(KVMINI)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let mut termed = false;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            return Run {
                status: status.code(),
                stdout: vec![],
                stderr,
            };
        }
        if let Some(ms) = term_after {
            if !termed && start.elapsed() >= std::time::Duration::from_millis(ms) {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                termed = true;
            }
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kvmini {args:?} still ran after {limit:?}: it blocked");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn files_read_whole_must_be_regular_and_a_fifo_never_blocks_the_open() {
    let dir = TempDir::new("fifo-in");
    let fifo = mkfifo(&dir, "fifo");
    let limit = std::time::Duration::from_secs(10);
    for (flag, what) in [
        ("--kernel", fifo.as_str()),
        ("--initramfs", fifo.as_str()),
        ("--input", fifo.as_str()),
        ("--initramfs", "/dev/zero"),
        ("--kernel", "/dev/null"),
        ("--input", "/dev/zero"),
    ] {
        let r = kvmini_within(&[flag, what, "--timeout", "5s"], limit, None);
        r.assert_no_panic();
        assert_eq!(r.status, Some(2), "{flag} {what}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert!(r.stderr.contains(&format!("{flag} {what}")), "{}", r.stderr);
        assert!(r.stderr.contains("not a regular file"), "{}", r.stderr);
    }
}

#[test]
fn an_output_fifo_without_a_reader_is_refused_at_once() {
    let dir = TempDir::new("fifo-out");
    let fifo = mkfifo(&dir, "fifo");
    let file_arg = format!("file={fifo}");
    let limit = std::time::Duration::from_secs(10);
    for args in [
        vec!["--serial-log", fifo.as_str()],
        vec!["--serial", file_arg.as_str()],
        vec!["--serial2", file_arg.as_str()],
    ] {
        let mut all = args.clone();
        all.extend(["--timeout", "5s"]);
        let r = kvmini_within(&all, limit, None);
        r.assert_no_panic();
        assert_eq!(r.status, Some(2), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(args[0]), "{}", r.stderr);
        assert!(r.stderr.contains("nobody is reading"), "{}", r.stderr);
    }
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn a_reader_that_stops_reading_never_outlives_the_timeout_or_sigterm() {
    let dir = TempDir::new("fifo-stall");
    let fifo = mkfifo(&dir, "fifo");
    // The test holds the FIFO open for reading and never reads it.
    use std::os::unix::fs::OpenOptionsExt;
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    // One page of pipe buffer: the guest's output (tens of KiB a second on
    // a software KVM) fills it at once.
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on the descriptor the test holds.
    assert!(unsafe { libc::fcntl(_reader.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) } >= 4096);
    let file_arg = format!("file={fifo}");
    let limit = std::time::Duration::from_secs(20);
    for args in [
        vec!["--serial-log", fifo.as_str()],
        vec!["--serial", file_arg.as_str()],
    ] {
        let mut all = args.clone();
        all.extend(["--cmdline", "flood=2000000", "--timeout", "1500ms"]);
        let r = kvmini_within(&all, limit, None);
        r.assert_no_panic();
        assert_eq!(r.status, Some(5), "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("bytes"),
            "says what was lost: {}",
            r.stderr
        );
        let mut all = args.clone();
        all.extend(["--cmdline", "flood=2000000", "--timeout", "60s"]);
        let r = kvmini_within(&all, limit, Some(1000));
        assert_eq!(r.status, Some(143), "{args:?}: {}", r.stderr);
    }
}

/// Waits (at most 20 s) until kvmini's socket `sock` exists.
fn wait_for_socket(sock: &std::path::Path) {
    let start = std::time::Instant::now();
    while !sock.exists() {
        assert!(
            start.elapsed().as_secs() < 20,
            "kvmini never listened on {sock:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Starts `kvmini ARGS` in the background, waiting until `sock` exists.
fn spawn_listening(args: &[&str], sock: &std::path::Path) -> std::process::Child {
    let child = Command::new(KVMINI)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_socket(sock);
    child
}

/// Connects to `sock` and reads until `want` arrives (or 20 s pass).
fn client_sees(sock: &std::path::Path, want: &str) -> String {
    use std::io::Read;
    let mut c = std::os::unix::net::UnixStream::connect(sock).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains(want) {
        match c.read(&mut buf) {
            Ok(n @ 1..) => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn a_socket_in_use_is_refused_and_the_first_vm_stays_reachable() {
    let dir = TempDir::new("sock-busy");
    let sock = dir.path("vm.sock");
    let s = format!("socket={}", sock.display());
    let mut first = spawn_listening(
        &["--serial", &s, "--cmdline", "echo", "--timeout", "30s"],
        &sock,
    );
    let r = kvmini(&["--serial", &s, "--cmdline", "exit=0"]);
    r.assert_no_panic();
    assert_eq!(r.status, Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains("--serial socket=") && r.stderr.contains("in use"),
        "{}",
        r.stderr
    );
    // The refused run neither took the path nor deleted it.
    assert!(client_sees(&sock, "echo ready").contains("echo ready"));
    let _ = first.kill();
    let _ = first.wait();
}

#[test]
fn sockets_that_cannot_be_ours_are_refused() {
    let dir = TempDir::new("sock-bad");
    // Two ports on one path: the second finds the first listening.
    let sock = dir.path("vm.sock");
    let s = format!("socket={}", sock.display());
    let r = kvmini(&["--serial", &s, "--serial2", &s, "--cmdline", "exit=0"]);
    assert_eq!(r.status, Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains("--serial2 socket=") && r.stderr.contains("in use"),
        "{}",
        r.stderr
    );
    // A path that is a file is not replaced.
    let file = dir.path("notes.txt");
    std::fs::write(&file, b"keep me").unwrap();
    let r = kvmini(&["--serial", &format!("socket={}", file.display())]);
    assert_eq!(r.status, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("not a socket"), "{}", r.stderr);
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    // A path too long for sun_path says the limit.
    let long = format!("socket=/tmp/{}", "s".repeat(120));
    let r = kvmini(&["--serial", &long]);
    assert_eq!(r.status, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("shorter than 108"), "{}", r.stderr);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn a_stale_socket_is_replaced() {
    let dir = TempDir::new("sock-stale");
    let sock = dir.path("vm.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let s = format!("socket={}", sock.display());
    let r = kvmini(&["--serial", &s, "--cmdline", "exit=0"]);
    assert_eq!(r.status, Some(0), "{}", r.stderr);
}

/// `kvmini ARGS` under `ulimit -n N`, in the background.
fn spawn_with_fd_limit(n: u32, args: &str) -> std::process::Child {
    Command::new("sh")
        .args(["-c", &format!("ulimit -n {n} && exec {KVMINI} {args}")])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn a_socket_client_is_served_with_every_descriptor_in_use() {
    let dir = TempDir::new("sock-emfile");
    let sock = dir.path("vm.sock");
    let args = |mode: &str| {
        format!(
            "--serial socket='{}' --cmdline {mode} --timeout 30s",
            sock.display()
        )
    };
    // The fewest descriptors kvmini can set the VM up with: then the
    // client's connection needs one more than there is. A guest that ran
    // says so with its own status (7): a --timeout status would not show
    // that the setup had finished, only that it was slower than the
    // timeout (as in nested-ci's outer VM, where it once took longer).
    let runs = |n: u32| {
        let out = spawn_with_fd_limit(n, &args("exit=7"))
            .wait_with_output()
            .unwrap();
        out.status.code() == Some(7)
    };
    let (mut lo, mut hi) = (3u32, 64u32);
    assert!(runs(hi), "kvmini does not run with 64 descriptors");
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if runs(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let mut vm = spawn_with_fd_limit(hi, &args("echo"));
    wait_for_socket(&sock);
    let seen = client_sees(&sock, "echo ready");
    let _ = vm.kill();
    let _ = vm.wait();
    assert!(
        seen.contains("echo ready"),
        "ulimit -n {hi}: the client got {seen:?}"
    );
}

/// Starts `kvmini ARGS`, sends `sig` after `after`, and returns the run.
fn signalled(args: &[&str], sig: i32, after: std::time::Duration) -> Run {
    let child = Command::new(KVMINI)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // First until the signal shows blocked in /proc (SigBlk), then `after`.
    let start = std::time::Instant::now();
    loop {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
        let blocked = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .is_some_and(|m| m & (1 << (sig - 1)) != 0);
        if blocked || start.elapsed().as_secs() > 20 {
            break;
        }
        std::thread::yield_now();
    }
    std::thread::sleep(after);
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, sig) };
    child.wait_with_output().unwrap().into()
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn every_termination_signal_ends_kvmini_with_its_last_line() {
    let spin = ["--cmdline", "spin", "--timeout", "30s"];
    for (sig, name) in [
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGQUIT, "SIGQUIT"),
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGALRM, "SIGALRM"),
    ] {
        // While the guest runs, and while kvmini is still starting: as soon
        // as /proc shows the signal blocked (kvmini's own first code, a
        // constructor before Rust's runtime, blocks it; only exec and the C
        // library's start-up come before, see the README).
        for after_ms in [300, 0] {
            let r = signalled(&spin, sig, std::time::Duration::from_millis(after_ms));
            assert_eq!(
                r.status,
                Some(128 + sig),
                "{name} after {after_ms} ms: {}",
                r.stderr
            );
            assert_eq!(
                r.last_stderr_line(),
                format!(
                    "kvmini: stopped by signal {name} (exit status {})",
                    128 + sig
                ),
                "{name} after {after_ms} ms"
            );
        }
    }
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn until_sees_output_batched_in_the_ring_though_the_guest_never_exits_again() {
    // After 4 KiB without an irqchip COM1's writes are batched in KVM's
    // ring; this guest's last line ("flood done\n") is written there and
    // then it spins without a single exit. The match must come without
    // waiting for an exit that never comes: well before the 120 s timeout
    // (the test gives up after 30 s).
    for until in ["flood done\n", "done\n"] {
        let r = kvmini_within(
            &[
                "--cmdline",
                "flood=20000 then-spin",
                "--until",
                until,
                "--timeout",
                "120s",
            ],
            std::time::Duration::from_secs(30),
            None,
        );
        assert_eq!(r.status, Some(0), "{}", r.stderr);
        assert!(r.last_stderr_line().contains("matched"), "{}", r.stderr);
    }
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn running_out_of_descriptors_is_status_1_never_the_flags_fault() {
    // Every limit from "nothing but stdin, stdout and stderr" up to one
    // that runs: each step that runs out says so with status 1.
    let dir = TempDir::new("emfile");
    let log = dir.path("log");
    let args = format!(
        "--serial-log '{}' --serial2 null --cmdline exit=0",
        log.display()
    );
    let mut ran = false;
    for n in 3..40 {
        let r: Run = Command::new("sh")
            .args(["-c", &format!("ulimit -n {n} && exec {KVMINI} {args}")])
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
            .into();
        r.assert_no_panic();
        match r.status {
            Some(0) => ran = true,
            Some(1) => {
                assert_eq!(r.stderr.lines().count(), 1, "ulimit -n {n}: {}", r.stderr);
                assert!(
                    r.stderr.contains("Too many open files"),
                    "ulimit -n {n}: {}",
                    r.stderr
                );
            }
            other => panic!("ulimit -n {n}: status {other:?}: {}", r.stderr),
        }
    }
    assert!(ran, "kvmini never ran, even with 39 descriptors");
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn a_full_disk_keeps_the_guests_status_and_says_what_was_lost() {
    // The README: output that cannot be written does not change the
    // status; a warning says how many bytes of which output were lost.
    for (args, says) in [
        (
            vec!["--serial-log", "/dev/full"],
            "--serial-log: 49 bytes not written (No space left on device",
        ),
        (
            vec!["--serial", "file=/dev/full"],
            "COM1: 49 bytes of output not delivered (No space left on device",
        ),
        (
            vec!["--cmdline", "com2", "--serial2", "file=/dev/full"],
            "COM2: 24 bytes of output not delivered (No space left on device",
        ),
    ] {
        let r = kvmini(&args);
        r.assert_no_panic();
        assert_eq!(r.status, Some(0), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
        assert!(
            r.last_stderr_line().contains("(exit status 0)"),
            "{}",
            r.stderr
        );
    }
}
