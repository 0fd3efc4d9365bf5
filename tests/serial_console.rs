//! The serial console end to end: every back end (stdio, file, null, pty,
//! socket) on COM1 and COM2, the serial log and its timestamps, and the
//! console automation flags (--until, --fail-on, --input, --input-after),
//! all against the built-in tiny guest.
//!
//! Interactive tests talk to a running kvmini; every read has a deadline
//! and every kvmini gets --timeout, so a regression fails the test instead
//! of hanging it.

mod common;
use common::*;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long a test waits for kvmini to say or do something before failing.
const PATIENCE: Duration = Duration::from_secs(30);

/// The hello banner for `--cmdline CMDLINE` and the default 128 MiB.
fn banner(cmdline: &str) -> String {
    format!("kvmini tiny guest\nmemory: 128 MiB\ncmdline: {cmdline}\n")
}

// ---- a kvmini running in the background -------------------------------------

/// A kvmini child whose stderr is read line by line as it comes.
struct Session {
    child: Child,
    stderr: Receiver<String>,
    stderr_seen: Vec<String>,
    stdout: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Session {
    /// Starts kvmini with `args`, stdin null, stdout and stderr piped.
    fn spawn(args: &[&str]) -> Self {
        Self::spawn_with_stdin(args, Stdio::null())
    }

    /// Starts kvmini with stdin piped and stdout left to the caller.
    fn spawn_live(args: &[&str]) -> Self {
        Self::spawn_inner(args, Stdio::piped(), false)
    }

    fn spawn_with_stdin(args: &[&str], stdin: Stdio) -> Self {
        Self::spawn_inner(args, stdin, true)
    }

    fn spawn_inner(args: &[&str], stdin: Stdio, collect_stdout: bool) -> Self {
        let mut child = Command::new(KVMINI)
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG")
            .spawn()
            .expect("spawn kvmini");
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        let stdout = collect_stdout.then(|| {
            let mut out = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = out.read_to_end(&mut v);
                v
            })
        });
        Session {
            child,
            stderr: rx,
            stderr_seen: Vec::new(),
            stdout,
        }
    }

    /// Waits for a stderr line containing `needle`; returns it.
    fn stderr_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(l) => {
                    self.stderr_seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.kill();
                    panic!(
                        "no stderr line with {needle:?} within {PATIENCE:?}; stderr so far:\n{}",
                        self.stderr_seen.join("\n")
                    )
                }
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "kvmini closed stderr without a line containing {needle:?}:\n{}",
                    self.stderr_seen.join("\n")
                ),
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (at most PATIENCE) for kvmini to exit; returns what it did.
    fn finish(mut self) -> Run {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait for kvmini") {
                break s;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "kvmini did not exit within {PATIENCE:?}; stderr:\n{}",
                    self.stderr_seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stdout = self
            .stdout
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default();
        let mut lines = std::mem::take(&mut self.stderr_seen);
        lines.extend(self.stderr.iter());
        Run {
            status: status.code(),
            stdout,
            stderr: lines.iter().map(|l| format!("{l}\n")).collect(),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // A failed assertion must not leave a guest running.
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// Reads from `f` (any readable descriptor) until `want.len()` bytes have
/// arrived or PATIENCE runs out; fails the test unless they equal `want`.
#[track_caller]
fn expect_bytes(f: &mut File, want: &[u8], what: &str) {
    let mut got = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while got.len() < want.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{what}: waited {PATIENCE:?} for {want:?}, got only {got:?}"
        );
        let mut pfd = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
        if n <= 0 {
            continue;
        }
        let mut buf = vec![0u8; want.len() - got.len()];
        match f.read(&mut buf) {
            Ok(0) => panic!("{what}: end of file after {got:?}, wanted {want:?}"),
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("{what}: read failed after {got:?}: {e}"),
        }
    }
    assert_eq!(got, want, "{what}");
}

/// Opens a pty slave the way a terminal program does.
fn open_pty(path: &str) -> File {
    let c = std::ffi::CString::new(path).unwrap();
    // SAFETY: a valid C string; returns a new descriptor or -1.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
    assert!(fd >= 0, "open {path}: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a new descriptor nothing else owns.
    unsafe { File::from_raw_fd(fd) }
}

/// Connects to kvmini's serial socket, waiting for it to appear.
fn connect(path: &Path) -> UnixStream {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => {
                s.set_read_timeout(Some(PATIENCE)).unwrap();
                return s;
            }
            Err(e) if Instant::now() > deadline => {
                panic!("no serial socket at {}: {e}", path.display())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[track_caller]
fn read_exactly(s: &mut UnixStream, want: &[u8], what: &str) {
    let mut got = vec![0u8; want.len()];
    if let Err(e) = s.read_exact(&mut got) {
        panic!("{what}: waiting for {want:?}: {e}");
    }
    assert_eq!(got, want, "{what}");
}

/// The last stderr line of a clean debug-exit 0.
const EXIT_0: &str = "kvmini: guest wrote 0 to the debug-exit port (exit status 0)";

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

// ---- pty ----------------------------------------------------------------------

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn pty_backend_is_a_raw_terminal_both_ways() {
    let mut s = Session::spawn(&["--serial", "pty", "--cmdline", "echo", "--timeout", "60s"]);
    let line = s.stderr_line(" is on /dev/pts/");
    let path = line
        .strip_prefix("kvmini: --serial is on ")
        .unwrap_or_else(|| panic!("unexpected pty line {line:?}"));
    let mut pty = open_pty(path);
    // Printed before we attached: the pty held it for us.
    expect_bytes(&mut pty, b"echo ready\n", "banner on the pty");
    // Raw mode both ways: no CR/LF translation, no echo by the line
    // discipline, no signals for Ctrl-C, no Ctrl-A escape (that is only
    // for a terminal on stdin), 8-bit clean.
    let keys: &[u8] = b"typed on a pty\r\n\x00\x01x\x03\x1a\x7f\xfe\xff\n";
    pty.write_all(keys).unwrap();
    // The guest echoes a CR as CR LF; everything else comes back as is.
    let echoed = [&keys[..15], b"\n", &keys[15..]].concat();
    expect_bytes(&mut pty, &echoed, "echo through the pty");
    pty.write_all(b"second line\n").unwrap();
    expect_bytes(&mut pty, b"second line\n", "second echo");
    pty.write_all(&[0x04]).unwrap();
    let r = s.finish();
    r.assert_no_panic();
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert_eq!(r.last_stderr_line(), EXIT_0);
    assert!(r.stdout.is_empty(), "COM1 is on the pty, not stdout");
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn serial2_pty_names_its_flag() {
    let r = kvmini(&["--cmdline", "com2", "--serial2", "pty", "--timeout", "60s"]);
    r.assert_no_panic();
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert!(
        r.stderr
            .lines()
            .any(|l| l.starts_with("kvmini: --serial2 is on /dev/pts/")),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout_str(), "com2 done\n");
}

// ---- socket -------------------------------------------------------------------

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn socket_serves_one_client_after_another_and_replays_missed_output() {
    let dir = TempDir::new("sock");
    let sock = dir.path("vm.sock");
    // The log shows what the guest wrote, client or none.
    let log = dir.path("log");
    let s = Session::spawn(&[
        "--serial",
        &format!("socket={}", path_str(&sock)),
        "--serial-log",
        &path_str(&log),
        "--cmdline",
        "echo",
        "--timeout",
        "60s",
    ]);

    // First client: the banner, then a live echo.
    let mut c1 = connect(&sock);
    read_exactly(&mut c1, b"echo ready\n", "first client: banner");
    c1.write_all(b"one\n").unwrap();
    read_exactly(&mut c1, b"one\n", "first client: echo");
    // Type and leave at once: the echo comes back to nobody and must be
    // kept for the next client.
    c1.write_all(b"typed by the first client, echoed to the second\n")
        .unwrap();
    drop(c1);
    // Connect again only once the guest has echoed it (the log shows it):
    // the console queues output for the socket and writes it to the log in
    // one step, so the second client gets that line replayed, not live.
    let want: &[u8] = b"echo ready\none\ntyped by the first client, echoed to the second\n";
    let deadline = Instant::now() + PATIENCE;
    while std::fs::read(&log).unwrap_or_default() != want {
        assert!(
            Instant::now() < deadline,
            "the guest did not echo the first client's last line: log holds {:?}",
            String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default())
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut c2 = connect(&sock);
    read_exactly(
        &mut c2,
        b"typed by the first client, echoed to the second\n",
        "second client: replayed output",
    );
    c2.write_all(b"two\n").unwrap();
    read_exactly(&mut c2, b"two\n", "second client: live echo");
    c2.write_all(&[0x04]).unwrap();
    let r = s.finish();
    r.assert_no_panic();
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert_eq!(r.last_stderr_line(), EXIT_0);
    assert!(r.stdout.is_empty());
    assert!(!sock.exists(), "kvmini removes its socket at exit");
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn socket_output_before_the_first_client_is_replayed() {
    // --input types into COM1 from the start, so the guest echoes it before
    // anybody connects; the first client gets all of it, in order.
    let dir = TempDir::new("sock-early");
    let sock = dir.path("vm.sock");
    let input = dir.path("input");
    std::fs::write(&input, b"typed before anybody connected\n").unwrap();
    let log = dir.path("log");
    let s = Session::spawn(&[
        "--serial",
        &format!("socket={}", path_str(&sock)),
        "--serial-log",
        &path_str(&log),
        "--input",
        &path_str(&input),
        "--cmdline",
        "echo",
        "--timeout",
        "60s",
    ]);
    let want: &[u8] = b"echo ready\ntyped before anybody connected\n";
    // Connect only once the guest has echoed everything (the log shows it).
    let deadline = Instant::now() + PATIENCE;
    while std::fs::read(&log).unwrap_or_default() != want {
        assert!(
            Instant::now() < deadline,
            "the guest did not echo --input: log holds {:?}",
            String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = connect(&sock);
    read_exactly(&mut c, want, "replay to the first client");
    c.write_all(&[0x04]).unwrap();
    let r = s.finish();
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn socket_replay_keeps_the_newest_64_kib() {
    // 70000 echoed bytes with nobody connected: the client gets exactly the
    // last 65536 bytes of the output.
    let dir = TempDir::new("sock-big");
    let sock = dir.path("vm.sock");
    let input = dir.path("input");
    let typed: Vec<u8> = (0..70_000u32)
        .map(|i| {
            if i % 100 == 99 {
                b'\n'
            } else {
                b'0' + (i % 43) as u8
            }
        })
        .collect();
    std::fs::write(&input, &typed).unwrap();
    let log = dir.path("log");
    let s = Session::spawn(&[
        "--serial",
        &format!("socket={}", path_str(&sock)),
        "--serial-log",
        &path_str(&log),
        "--input",
        &path_str(&input),
        "--cmdline",
        "echo",
        "--timeout",
        "120s",
    ]);
    let mut output = b"echo ready\n".to_vec();
    output.extend_from_slice(&typed);
    let deadline = Instant::now() + Duration::from_secs(100);
    while std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) < output.len() as u64 {
        assert!(
            Instant::now() < deadline,
            "the guest echoed only {} of {} bytes",
            std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0),
            output.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut c = connect(&sock);
    read_exactly(
        &mut c,
        &output[output.len() - 64 * 1024..],
        "the newest 64 KiB",
    );
    c.write_all(b"!").unwrap();
    // Nothing else was queued: the next byte is the live echo.
    read_exactly(&mut c, b"!", "live echo after the replay");
    c.write_all(&[0x04]).unwrap();
    let r = s.finish();
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert_eq!(std::fs::read(&log).unwrap()[..output.len()], output[..]);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn socket_second_connection_waits_for_the_first_to_leave() {
    let dir = TempDir::new("sock-two");
    let sock = dir.path("vm.sock");
    let s = Session::spawn(&[
        "--serial",
        &format!("socket={}", path_str(&sock)),
        "--cmdline",
        "echo",
        "--timeout",
        "60s",
    ]);
    let mut a = connect(&sock);
    read_exactly(&mut a, b"echo ready\n", "first client: banner");
    // The second connection is queued, not served, while the first is on.
    let mut b = connect(&sock);
    b.write_all(b"from b\n").unwrap();
    a.write_all(b"from a\n").unwrap();
    read_exactly(&mut a, b"from a\n", "first client: echo");
    b.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut probe = [0u8; 1];
    match b.read(&mut probe) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
        other => panic!("the waiting client got {other:?} while the first was connected"),
    }
    drop(a);
    // Now b is accepted, and what it typed while waiting reaches the guest.
    b.set_read_timeout(Some(PATIENCE)).unwrap();
    read_exactly(&mut b, b"from b\n", "second client: echo");
    b.write_all(&[0x04]).unwrap();
    let r = s.finish();
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
}

// Regression (found by this test): a socket client that connected and then
// stopped reading froze kvmini, because the console thread blocked in
// send(2) and so never saw --timeout or SIGTERM. Output to every back end is
// now written without blocking; a slow client costs output, never control.
#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn socket_client_that_stops_reading_does_not_block_the_timeout() {
    let dir = TempDir::new("sock-stuck");
    let sock = dir.path("vm.sock");
    let s = Session::spawn(&[
        "--serial",
        &format!("socket={}", path_str(&sock)),
        "--cmdline",
        "flood=1000000",
        "--timeout",
        "5s",
    ]);
    // Connect, never read.
    let _client = connect(&sock);
    let r = s.finish();
    r.assert_no_panic();
    assert_eq!(r.status, Some(5), "stderr:\n{}", r.stderr);
    assert_eq!(r.last_stderr_line(), "kvmini: timed out (exit status 5)");
}

// ---- file, null, COM2 ----------------------------------------------------------

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn com1_to_file_and_to_null() {
    let dir = TempDir::new("com1-file");
    let out = dir.path("com1.txt");
    std::fs::write(
        &out,
        "stale contents, longer than the banner will be..........\n",
    )
    .unwrap();
    let r = kvmini(&[
        "--serial",
        &format!("file={}", path_str(&out)),
        "--cmdline",
        "hello to a file",
        "--timeout",
        "60s",
    ]);
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert!(r.stdout.is_empty());
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        banner("hello to a file"),
        "the file is truncated, then holds exactly the output"
    );

    let r = kvmini(&["--serial", "null", "--timeout", "60s"]);
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert!(r.stdout.is_empty());
    assert_eq!(r.last_stderr_line(), EXIT_0);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn com2_from_the_tiny_guest_to_a_file() {
    let dir = TempDir::new("com2-file");
    let out = dir.path("ttyS1.txt");
    let r = kvmini(&[
        "--cmdline",
        "com2",
        "--serial2",
        &format!("file={}", path_str(&out)),
        "--timeout",
        "60s",
    ]);
    r.assert_no_panic();
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "kvmini tiny guest: COM2\n"
    );
    assert_eq!(r.stdout_str(), "com2 done\n");
    assert_eq!(r.last_stderr_line(), EXIT_0);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn com2_to_null_and_both_ports_to_files() {
    let r = kvmini(&["--cmdline", "com2", "--serial2", "null", "--timeout", "60s"]);
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert_eq!(r.stdout_str(), "com2 done\n");

    let dir = TempDir::new("com12-file");
    let (one, two) = (dir.path("ttyS0.txt"), dir.path("ttyS1.txt"));
    let r = kvmini(&[
        "--cmdline",
        "com2",
        "--serial",
        &format!("file={}", path_str(&one)),
        "--serial2",
        &format!("file={}", path_str(&two)),
        "--timeout",
        "60s",
    ]);
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert!(r.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&one).unwrap(), "com2 done\n");
    assert_eq!(
        std::fs::read_to_string(&two).unwrap(),
        "kvmini tiny guest: COM2\n"
    );
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn without_serial2_com2_output_goes_nowhere() {
    // No COM2 device: the guest's COM2 writes are ignored, and COM1 still
    // carries only its own line.
    let r = kvmini(&["--cmdline", "com2", "--timeout", "60s"]);
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert_eq!(r.stdout_str(), "com2 done\n");
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn serial2_stdio_next_to_com1_stdio_is_bad_input() {
    let r = kvmini(&["--serial2", "stdio", "--timeout", "60s"]);
    r.assert_no_panic();
    assert_eq!(r.status, Some(2), "stderr:\n{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "one line:\n{}", r.stderr);
    assert!(r.stderr.contains("--serial2"), "{}", r.stderr);
    assert!(r.stdout.is_empty());

    // With COM1 elsewhere, COM2 may have stdio.
    let r = kvmini(&[
        "--cmdline",
        "com2",
        "--serial",
        "null",
        "--serial2",
        "stdio",
        "--timeout",
        "60s",
    ]);
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert_eq!(r.stdout_str(), "kvmini tiny guest: COM2\n");
}

// ---- --serial-log ----------------------------------------------------------

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn serial_log_copies_com1_exactly() {
    let dir = TempDir::new("log");
    let log = dir.path("console.log");
    // Next to stdio: the same bytes in both.
    let r = kvmini(&["--serial-log", &path_str(&log), "--timeout", "60s"]);
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert_eq!(r.stdout_str(), banner("hello"));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), banner("hello"));

    // With COM1 on null, the log still gets everything; COM2 is not logged.
    let r = kvmini(&[
        "--serial",
        "null",
        "--serial2",
        "null",
        "--cmdline",
        "com2",
        "--serial-log",
        &path_str(&log),
        "--timeout",
        "60s",
    ]);
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert!(r.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "com2 done\n");
}

/// Splits a timestamped log line "[   S.UUUUUU] text" into (seconds, text),
/// checking the prefix format character by character.
#[track_caller]
fn split_stamp(line: &str) -> (f64, &str) {
    let b = line.as_bytes();
    assert!(b.len() >= 14, "line too short for a timestamp: {line:?}");
    assert_eq!(b[0], b'[', "{line:?}");
    // Seconds: right-aligned in 4 columns (spaces, then at least 1 digit).
    let secs = &line[1..5];
    let digits = secs.trim_start_matches(' ');
    assert!(
        !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()),
        "seconds field {secs:?} in {line:?}"
    );
    assert_eq!(b[5], b'.', "{line:?}");
    let micros = &line[6..12];
    assert!(
        micros.bytes().all(|c| c.is_ascii_digit()),
        "microseconds field {micros:?} in {line:?}"
    );
    assert_eq!(&line[12..14], "] ", "{line:?}");
    let t: f64 = format!("{digits}.{micros}").parse().unwrap();
    (t, &line[14..])
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn serial_log_timestamps_prefix_every_line() {
    let dir = TempDir::new("log-ts");
    let log = dir.path("console.log");
    let r = kvmini(&[
        "--serial-log",
        &path_str(&log),
        "--serial-timestamps",
        "--cmdline",
        "hello [   9.999999] lookalike",
        "--timeout",
        "60s",
    ]);
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    // stdout is never stamped.
    assert_eq!(r.stdout_str(), banner("hello [   9.999999] lookalike"));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.ends_with('\n'), "{text:?}");
    let mut stripped = String::new();
    let mut last = 0.0;
    for line in text.lines() {
        let (t, rest) = split_stamp(line);
        assert!(t >= last, "timestamps go backwards: {text}");
        assert!(
            t < 30.0,
            "seconds since kvmini started, not some epoch: {line:?}"
        );
        last = t;
        stripped.push_str(rest);
        stripped.push('\n');
    }
    assert_eq!(stripped, banner("hello [   9.999999] lookalike"));
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn serial_log_timestamps_count_from_kvmini_start() {
    // A line typed 1.5 s after the banner is stamped 1.5 s after it, on a
    // clock that starts with kvmini, and a line split over two writes gets
    // one stamp.
    let dir = TempDir::new("log-ts2");
    let log = dir.path("console.log");
    // Every time below is seconds since just before the spawn, so kvmini's
    // clock starts after 0 and before the banner is seen; and a line is
    // stamped (when it reaches the log) before its echo reaches stdout.
    let before = Instant::now();
    let mut s = Session::spawn_live(&[
        "--serial-log",
        &path_str(&log),
        "--serial-timestamps",
        "--cmdline",
        "echo",
        "--timeout",
        "60s",
    ]);
    let mut stdin = s.child.stdin.take().unwrap();
    let mut out = File::from(std::os::fd::OwnedFd::from(s.child.stdout.take().unwrap()));
    expect_bytes(&mut out, b"echo ready\n", "banner");
    let banner_seen = before.elapsed().as_secs_f64();
    // The delay the stamps must show (not a wait for anything).
    std::thread::sleep(Duration::from_millis(1500));
    let typed = before.elapsed().as_secs_f64();
    stdin.write_all(b"late li").unwrap();
    stdin.flush().unwrap();
    // Its echo is on stdout, so logged: the rest of the line is another
    // write.
    expect_bytes(&mut out, b"late li", "first half of the late line");
    let late_seen = before.elapsed().as_secs_f64();
    stdin.write_all(b"ne\n\nx").unwrap();
    stdin.write_all(&[0x04]).unwrap();
    drop(stdin);
    expect_bytes(&mut out, b"ne\n\nx", "rest of the output");
    let r = s.finish();
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    // stdout had the same bytes, unstamped, and nothing else.
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"", "stdout after the guest's last echo");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.split('\n').collect();
    assert_eq!(lines.len(), 4, "{text:?}");
    let (t0, l0) = split_stamp(lines[0]);
    let (t1, l1) = split_stamp(lines[1]);
    let (t2, l2) = split_stamp(lines[2]);
    let (t3, l3) = split_stamp(lines[3]);
    assert_eq!([l0, l1, l2, l3], ["echo ready", "late line", "", "x"]);
    // Stamps are truncated to microseconds: 1 ms of slack covers that.
    let slack = 0.001;
    assert!(
        t0 <= banner_seen,
        "banner stamped {t0}, seen at {banner_seen}"
    );
    assert!(
        t1 >= typed - banner_seen - slack && t1 <= late_seen,
        "late line stamped {t1}: typed at {typed}, banner seen at {banner_seen}, \
         echo seen at {late_seen}"
    );
    assert!(
        t1 - t0 >= typed - banner_seen - slack,
        "banner {t0}, late line {t1}"
    );
    assert!(t1 <= t2 && t2 <= t3, "{text}");
}

// ---- --until / --fail-on -----------------------------------------------------

/// Runs the `echo` guest with `typed` as --input plus `args`; the guest
/// echoes the input and then waits for more, so whatever ends the run is
/// kvmini's doing, not the guest's.
fn echo_typing(tag: &str, typed: &[u8], args: &[&str]) -> Run {
    let dir = TempDir::new(tag);
    let input = dir.path("input");
    std::fs::write(&input, typed).unwrap();
    let mut all = vec!["--cmdline", "echo", "--input"];
    let input = path_str(&input);
    all.push(&input);
    all.extend_from_slice(args);
    let r = kvmini(&all);
    r.assert_no_panic();
    r
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn until_stops_the_vm_with_status_0_when_the_output_matches() {
    let r = echo_typing(
        "until",
        b"running 3 tests\nALL TESTS PASSED\n",
        &["--until", "ALL TESTS PASSED", "--timeout", "60s"],
    );
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert_eq!(
        r.last_stderr_line(),
        r#"kvmini: --until "ALL TESTS PASSED" matched (exit status 0)"#
    );
    let out = r.stdout_str();
    assert!(
        out.starts_with("echo ready\nrunning 3 tests\nALL TESTS PASSED"),
        "{out:?}"
    );
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn until_pattern_may_span_lines() {
    let r = echo_typing(
        "until-span",
        b"memory: 128 MiB\ncmdline: x\n",
        &["--until", r"memory: \d+ MiB\ncmdline", "--timeout", "60s"],
    );
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert_eq!(
        r.last_stderr_line(),
        r#"kvmini: --until "memory: \\d+ MiB\\ncmdline" matched (exit status 0)"#
    );
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn any_of_several_until_patterns_stops_the_vm() {
    let r = echo_typing(
        "until-many",
        b"step 1\nstep 2 done\n",
        &[
            "--until",
            "never printed",
            "--until",
            r"step \d done",
            "--timeout",
            "60s",
        ],
    );
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert_eq!(
        r.last_stderr_line(),
        r#"kvmini: --until "step \\d done" matched (exit status 0)"#
    );
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn fail_on_stops_the_vm_with_status_7() {
    let r = echo_typing(
        "fail-on",
        b"test_a ok\ntest_b FAILED\n",
        &["--fail-on", "Kernel panic|FAILED", "--timeout", "60s"],
    );
    assert_eq!(r.status, Some(7), "stderr:\n{}", r.stderr);
    assert_eq!(
        r.last_stderr_line(),
        r#"kvmini: --fail-on "Kernel panic|FAILED" matched (exit status 7)"#
    );
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn fail_on_wins_over_until() {
    // Both patterns match the same output.
    let r = echo_typing(
        "fail-wins",
        b"1 FAILED\nALL TESTS PASSED\n",
        &[
            "--until",
            "ALL TESTS PASSED",
            "--fail-on",
            "FAILED",
            "--timeout",
            "60s",
        ],
    );
    assert_eq!(r.status, Some(7), "stderr:\n{}", r.stderr);
    assert!(r.last_stderr_line().contains("--fail-on"), "{}", r.stderr);
    // Both matches end on the same byte, however the output is batched.
    let r = echo_typing(
        "fail-wins-same",
        b"summary: 1 FAILED\n",
        &[
            "--until",
            r"summary: .*\n",
            "--fail-on",
            r"FAILED\n",
            "--timeout",
            "60s",
        ],
    );
    assert_eq!(r.status, Some(7), "stderr:\n{}", r.stderr);
    assert!(r.last_stderr_line().contains("--fail-on"), "{}", r.stderr);
}

/// The `echo` guest echoes `typed` (no final newline) and waits for more:
/// whatever kvmini does, the guest's last line is unfinished when the VM
/// ends. Returns the run and what `--serial-log` recorded.
fn cut_line(tag: &str, typed: &[u8], args: &[&str]) -> (Run, Vec<u8>) {
    let dir = TempDir::new(tag);
    let log = path_str(&dir.path("console.log"));
    let mut all = vec!["--serial-log", log.as_str()];
    all.extend_from_slice(args);
    let r = echo_typing(&format!("{tag}-run"), typed, &all);
    let logged = std::fs::read(&log).unwrap();
    (r, logged)
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn a_line_kvmini_cuts_is_ended_on_stdout_and_logged_exactly() {
    for (args, status) in [
        (&["--fail-on", "FAILED", "--timeout", "60s"][..], 7),
        (&["--until", "PASSED", "--timeout", "60s"][..], 0),
        (&["--timeout", "2s"][..], 5),
    ] {
        let (r, logged) = cut_line("cut-line", b"test_b PASSED FAILED: 3 != 4", args);
        assert_eq!(r.status, Some(status), "{args:?}\nstderr:\n{}", r.stderr);
        // The guest's bytes, exactly, in the log: its line is unfinished.
        assert!(
            logged.starts_with(b"echo ready\ntest_b PASSED"),
            "{logged:?}"
        );
        assert_ne!(logged.last(), Some(&b'\n'), "{args:?}: {logged:?}");
        // On stdout the same bytes and a newline, so that the shell's next
        // output (`echo $?`) starts on a line of its own.
        let mut want = logged.clone();
        want.push(b'\n');
        assert_eq!(r.stdout_str(), String::from_utf8_lossy(&want), "{args:?}");
    }
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn until_that_never_matches_ends_in_the_timeout() {
    let r = kvmini(&[
        "--cmdline",
        "spin",
        "--until",
        "ALL TESTS PASSED",
        "--fail-on",
        "FAILED",
        "--timeout",
        "2s",
    ]);
    r.assert_no_panic();
    assert_eq!(r.status, Some(5), "stderr:\n{}", r.stderr);
    assert_eq!(r.last_stderr_line(), "kvmini: timed out (exit status 5)");
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn patterns_see_only_com1() {
    // COM2's line contains "COM2"; only COM1 is watched, so the guest runs
    // to its own end.
    let r = kvmini(&[
        "--cmdline",
        "com2",
        "--serial2",
        "null",
        "--fail-on",
        "COM2",
        "--timeout",
        "60s",
    ]);
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert_eq!(r.last_stderr_line(), EXIT_0);
}

// Regression (found by this test at 7cdf1b2, fixed in 96ba011): the hello
// guest prints its banner and at once writes 0 to the debug-exit port. The
// vCPU's GuestExit(0) used to be recorded before the console thread fed the
// banner to the watchers, and the first reason won, so `--fail-on FAILED`
// on a guest that printed FAILED and exited 0 reported success (status 0).
// Output printed before the guest's exit must still decide the verdict.
#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn fail_on_matches_output_printed_just_before_a_clean_exit() {
    let r = kvmini(&[
        "--cmdline",
        "hello test_b FAILED",
        "--fail-on",
        "FAILED",
        "--timeout",
        "60s",
    ]);
    assert_eq!(r.stdout_str(), banner("hello test_b FAILED"));
    assert_eq!(
        r.status,
        Some(7),
        "FAILED was printed, so --fail-on must decide; stderr:\n{}",
        r.stderr
    );
    assert_eq!(
        r.last_stderr_line(),
        r#"kvmini: --fail-on "FAILED" matched (exit status 7)"#
    );
    // Both match: fail-on wins. Both matches end on the banner's last
    // byte, just before the guest's clean exit; with `--until "ALL TESTS
    // PASSED"` the VM could stop (status 0) before " FAILED" was printed,
    // as it did once under real KVM.
    let r = kvmini(&[
        "--cmdline",
        "hello ALL TESTS PASSED FAILED",
        "--until",
        r"ALL TESTS PASSED.*\n",
        "--fail-on",
        r"FAILED\n",
        "--timeout",
        "60s",
    ]);
    assert_eq!(r.status, Some(7), "stderr:\n{}", r.stderr);
    assert!(r.last_stderr_line().contains("--fail-on"), "{}", r.stderr);
}

// Regression (same cause as above): --until on the hello banner was
// reported as the guest's debug-exit instead of as the --until match.
#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn until_matches_output_printed_just_before_a_clean_exit() {
    let r = kvmini(&[
        "--cmdline",
        "hello ALL TESTS PASSED",
        "--until",
        "ALL TESTS PASSED",
        "--timeout",
        "60s",
    ]);
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert_eq!(
        r.last_stderr_line(),
        r#"kvmini: --until "ALL TESTS PASSED" matched (exit status 0)"#
    );
    let r = kvmini(&["--until", r"memory: \d+ MiB\ncmdline", "--timeout", "60s"]);
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert!(r.last_stderr_line().contains("--until"), "{}", r.stderr);
}

// Regression (found by this test at 7cdf1b2, fixed in 96ba011): regex::Error's
// Display is a multi-line diagram ("regex parse error:\n    (unclosed\n
// ^\nerror: unclosed group"), which put 4 lines on stderr instead of the
// one-line error every other bad input gets.
#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn invalid_patterns_are_bad_input_naming_the_flag() {
    let dir = TempDir::new("bad-re");
    let input = dir.path("input");
    std::fs::write(&input, b"x").unwrap();
    let input = path_str(&input);
    for flag in ["--until", "--fail-on", "--input-after"] {
        let r = kvmini(&[
            flag,
            "(unclosed",
            "--input",
            &input,
            "--cmdline",
            "spin",
            "--timeout",
            "10s",
        ]);
        r.assert_no_panic();
        assert_eq!(r.status, Some(2), "{flag}: stderr:\n{}", r.stderr);
        assert_eq!(
            r.stderr.lines().count(),
            1,
            "{flag}: one line:\n{}",
            r.stderr
        );
        assert!(r.stderr.contains(flag), "{flag}: {}", r.stderr);
        assert!(r.stderr.contains("(unclosed"), "{flag}: {}", r.stderr);
        assert!(r.stdout.is_empty());
    }
}

// ---- --input / --input-after / stdin ---------------------------------------

fn typed_3000() -> Vec<u8> {
    let mut v: Vec<u8> = (0..3000u32).map(|i| b' ' + (i % 95) as u8).collect();
    v.push(0x04);
    v
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn input_is_typed_with_back_pressure() {
    // 3000 bytes through a 64-byte FIFO: nothing lost, nothing reordered.
    let typed = typed_3000();
    let r = echo_typing("input", &typed, &["--timeout", "60s"]);
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    let mut want = b"echo ready\n".to_vec();
    want.extend_from_slice(&typed[..typed.len() - 1]);
    assert_eq!(r.stdout, want);
    assert_eq!(r.last_stderr_line(), EXIT_0);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn input_after_waits_for_the_pattern() {
    let typed = typed_3000();
    let r = echo_typing(
        "input-after",
        &typed,
        &["--input-after", "echo ready", "--timeout", "60s"],
    );
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    let mut want = b"echo ready\n".to_vec();
    want.extend_from_slice(&typed[..typed.len() - 1]);
    assert_eq!(r.stdout, want);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn input_after_that_never_matches_types_nothing() {
    let r = echo_typing(
        "input-never",
        &typed_3000(),
        &["--input-after", "never", "--timeout", "2s"],
    );
    assert_eq!(r.status, Some(5), "stderr:\n{}", r.stderr);
    assert_eq!(r.stdout_str(), "echo ready\n");
    assert_eq!(r.last_stderr_line(), "kvmini: timed out (exit status 5)");
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn until_stops_an_echo_guest_on_what_the_input_made_it_echo() {
    // The guest would echo forever (no Ctrl-D in the input); --until ends it
    // once the second command's echo appears.
    let r = echo_typing(
        "input-until",
        b"first command\nsecond command\nthird command\n",
        &[
            "--input-after",
            "echo ready\n",
            "--until",
            "second command\n",
            "--timeout",
            "60s",
        ],
    );
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert_eq!(
        r.last_stderr_line(),
        r#"kvmini: --until "second command\n" matched (exit status 0)"#
    );
    assert!(
        r.stdout_str()
            .starts_with("echo ready\nfirst command\nsecond command\n"),
        "{:?}",
        r.stdout_str()
    );
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn missing_input_file_is_bad_input() {
    let r = kvmini(&[
        "--input",
        "/nonexistent/commands.txt",
        "--cmdline",
        "echo",
        "--timeout",
        "10s",
    ]);
    r.assert_no_panic();
    assert_eq!(r.status, Some(2), "stderr:\n{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("/nonexistent/commands.txt"),
        "{}",
        r.stderr
    );
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn input_reaches_com1_whatever_its_back_end() {
    let dir = TempDir::new("input-null");
    let log = dir.path("log");
    let r = echo_typing(
        "input-null-in",
        b"typed\n\x04",
        &[
            "--serial",
            "null",
            "--serial-log",
            &path_str(&log),
            "--timeout",
            "60s",
        ],
    );
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert!(r.stdout.is_empty());
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "echo ready\ntyped\n"
    );
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn stdin_pipe_is_forwarded_and_its_eof_does_not_end_the_vm() {
    // No Ctrl-D: stdin ends, the guest keeps waiting, --timeout ends it.
    // Ctrl-A is not an escape key on a pipe.
    let typed: &[u8] = b"piped\n\x01x\x01\x01";
    let r = kvmini_with_input(&["--cmdline", "echo", "--timeout", "2s"], Some(typed));
    r.assert_no_panic();
    assert_eq!(r.status, Some(5), "stderr:\n{}", r.stderr);
    let mut want = b"echo ready\n".to_vec();
    want.extend_from_slice(typed);
    // The timeout cut the guest's last line: kvmini ends it.
    want.push(b'\n');
    assert_eq!(r.stdout, want);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn stdio_output_is_live_while_the_guest_runs() {
    // Each echo must reach stdout while the guest still runs, not when it
    // exits: an interactive console, and --until on live output, need it.
    let mut s = Session::spawn_live(&["--cmdline", "echo", "--timeout", "60s"]);
    let mut stdin = s.child.stdin.take().unwrap();
    let mut out = File::from(std::os::fd::OwnedFd::from(s.child.stdout.take().unwrap()));
    expect_bytes(&mut out, b"echo ready\n", "banner, live");
    for line in [&b"first line\n"[..], b"second", b" line\n"] {
        stdin.write_all(line).unwrap();
        stdin.flush().unwrap();
        expect_bytes(&mut out, line, "echo, live");
    }
    stdin.write_all(&[0x04]).unwrap();
    let r = s.finish();
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn input_refused_in_loopback_is_offered_again_when_loopback_ends() {
    // The guest says "loopback on", enters loopback at once (the UART then
    // takes no input), leaves it and only polls LSR: the input, released by
    // --input-after while loopback was on, must still arrive.
    let dir = TempDir::new("loopback");
    let input = dir.path("in");
    std::fs::write(&input, b"hi\x04").unwrap();
    let input = input.display().to_string();
    for irqchip in ["off", "on"] {
        for _ in 0..4 {
            let r = kvmini(&[
                "--cmdline",
                "loopback",
                "--irqchip",
                irqchip,
                "--input",
                &input,
                "--input-after",
                "loopback on",
                "--timeout",
                "30s",
            ]);
            assert_eq!(r.status, Some(0), "--irqchip {irqchip}: {}", r.stderr);
            assert_eq!(r.stdout_str(), "loopback on\nhi");
        }
    }
}

// ---- ,wait ------------------------------------------------------------------

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn socket_wait_holds_the_guest_until_the_first_client() {
    let dir = TempDir::new("sockwait");
    let sock = dir.path("vm.sock");
    let arg = format!("socket={},wait", sock.display());
    let mut s = Session::spawn(&["--serial", &arg, "--timeout", "60s"]);
    let line = s.stderr_line("is listening on");
    assert!(
        line.contains("the guest starts when a client connects"),
        "{line}"
    );
    // Held: the hello guest, which ends in milliseconds once it runs, is
    // still there a second later.
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "the guest ran without a client"
    );
    let mut c = connect(&sock);
    read_exactly(
        &mut c,
        b"kvmini tiny guest\n",
        "the banner from its first byte",
    );
    let r = s.finish();
    assert_eq!(r.status, Some(0), "{}", r.stderr);
    assert_eq!(r.last_stderr_line(), EXIT_0);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn pty_wait_holds_the_guest_until_the_pty_is_opened() {
    let mut s = Session::spawn(&[
        "--serial",
        "pty,wait",
        "--cmdline",
        "echo",
        "--timeout",
        "60s",
    ]);
    let line = s.stderr_line(" is on /dev/pts/");
    let path = line
        .strip_prefix("kvmini: --serial is on ")
        .and_then(|l| l.split(';').next())
        .unwrap_or_else(|| panic!("unexpected pty line {line:?}"))
        .to_string();
    std::thread::sleep(std::time::Duration::from_secs(1));
    // Attach as screen and picocom do: open, then flush. Had the guest run
    // already, its banner would be flushed away.
    let mut pty = open_pty(&path);
    // SAFETY: tcflush on the descriptor the test holds.
    let flushed = unsafe { libc::tcflush(pty.as_raw_fd(), libc::TCIOFLUSH) };
    assert_eq!(flushed, 0);
    expect_bytes(&mut pty, b"echo ready\n", "the banner after the flush");
    pty.write_all(&[0x04]).unwrap();
    let r = s.finish();
    assert_eq!(r.status, Some(0), "{}", r.stderr);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn the_timeout_counts_while_waiting_for_a_client() {
    let dir = TempDir::new("sockwait-timeout");
    let arg = format!("socket={},wait", dir.path("vm.sock").display());
    let r = kvmini(&["--serial", &arg, "--timeout", "300ms"]);
    assert_eq!(r.status, Some(5), "{}", r.stderr);
    let r = kvmini(&["--serial", "file=/dev/null,wait"]);
    assert_eq!(r.status, Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains("only pty and socket=PATH have clients"),
        "{}",
        r.stderr
    );
}
