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
