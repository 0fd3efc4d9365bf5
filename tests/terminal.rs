//! kvmini on a terminal: raw mode while the guest runs, the Ctrl-A
//! escapes, and the terminal settings restored on every way out. Runs
//! kvmini under `script`, which gives it a pseudo-terminal as stdin.

mod common;
use common::*;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long a test waits for the terminal to show what it expects, and then
/// for kvmini to finish, before it fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// Runs `kvmini ARGS` on a fresh pty, typing as it goes: for each
/// `(shown, keys)` step it waits until the transcript (carriage returns
/// aside) shows `shown` after what the step before waited for, then types
/// `keys`. The first step waits for the guest's banner (kvmini makes the
/// terminal raw before it starts the guest, so no key reaches a cooked
/// terminal), later ones for the guest's echo of the keys before. Returns
/// the transcript, with `stty -g` printed before and after, and without the
/// terminal's carriage returns.
fn on_tty(args: &str, steps: &[(&str, &[u8])]) -> String {
    on_tty_raw(args, steps).replace('\r', "")
}

/// [`on_tty`] with the carriage returns left in.
fn on_tty_raw(args: &str, steps: &[(&str, &[u8])]) -> String {
    assert!(
        std::path::Path::new("/usr/bin/script").exists(),
        "this test needs script(1) from util-linux to provide a terminal"
    );
    // Leading NAME=VALUE words are kvmini's environment.
    let (env, args) = match args.split_once(' ') {
        Some((e, rest)) if e.contains('=') && !e.starts_with('-') => (e, rest),
        _ => ("", args),
    };
    let cmd = format!("stty -g; {env} {KVMINI} {args}; echo \"status=$?\"; stty -g");
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The transcript as it comes, in whatever pieces the pty hands over.
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let mut out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = out.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut err = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + PATIENCE;
    let mut transcript = Vec::new();
    // What the test waited for in vain, if it did.
    let mut missed = None;
    // Where in the transcript (without \r) the last step's `shown` ended.
    let mut from = 0;
    let mut ended = false;
    'steps: for (shown, keys) in steps {
        loop {
            let t: Vec<u8> = transcript.iter().copied().filter(|&b| b != b'\r').collect();
            if let Some(i) = t[from..]
                .windows(shown.len())
                .position(|w| w == shown.as_bytes())
            {
                from += i + shown.len();
                break;
            }
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(piece) => transcript.extend(piece),
                // kvmini and script ended without showing it: type nothing
                // more, and let the caller's assertions say what is wrong.
                Err(RecvTimeoutError::Disconnected) => {
                    ended = true;
                    break 'steps;
                }
                Err(RecvTimeoutError::Timeout) => {
                    missed = Some(format!(
                        "the terminal did not show {shown:?} (to type {keys:?} next)"
                    ));
                    break 'steps;
                }
            }
        }
        stdin.write_all(keys).unwrap();
        stdin.flush().unwrap();
    }
    while !ended && missed.is_none() {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(piece) => transcript.extend(piece),
            Err(RecvTimeoutError::Disconnected) => ended = true,
            Err(RecvTimeoutError::Timeout) => {
                missed = Some("kvmini and script did not finish".to_string())
            }
        }
    }
    if let Some(what) = missed {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{what} within {PATIENCE:?}; transcript so far: {:?}; script's stderr: {:?}",
            String::from_utf8_lossy(&transcript),
            stderr.join().unwrap_or_default()
        );
    }
    child.wait().unwrap();
    drop(stdin);
    String::from_utf8_lossy(&transcript).into_owned()
}

/// The two `stty -g` lines must be equal: the terminal is as it was.
#[track_caller]
fn assert_restored(t: &str) {
    let lines: Vec<&str> = t.lines().filter(|l| l.matches(':').count() > 10).collect();
    assert_eq!(lines.len(), 2, "transcript: {t}");
    assert_eq!(lines[0], lines[1], "terminal settings changed: {t}");
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn ctrl_a_x_quits_and_the_terminal_is_restored() {
    let raw = on_tty_raw(
        "--cmdline echo",
        &[("echo ready\n", b"hi"), ("hi", b"\x01x")],
    );
    // Ctrl-A x cut the guest's line "hi": kvmini ends it (one \n, which the
    // terminal's output processing, kept on in raw mode, shows as \r\n),
    // and its own message starts on a line of its own.
    assert!(
        raw.contains("hi\r\nkvmini: stopped from the console"),
        "{raw:?}"
    );
    let t = raw.replace('\r', "");
    assert!(t.contains("echo ready\nhi"), "{t}");
    assert!(
        t.contains("stopped from the console (Ctrl-A x) (exit status 130)"),
        "{t}"
    );
    assert!(t.contains("status=130"), "{t}");
    assert_restored(&t);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn ctrl_a_ctrl_a_sends_a_literal_ctrl_a() {
    // The guest echoes what it gets; a literal Ctrl-A comes back.
    let t = on_tty(
        "--cmdline echo",
        &[("echo ready\n", b"\x01\x01"), ("\x01", b"z\x04")],
    );
    assert!(t.contains("echo ready\n\x01z"), "{t:?}");
    assert!(t.contains("status=0"), "{t}");
    assert_restored(&t);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn raw_mode_passes_control_keys_to_the_guest() {
    // Ctrl-C is a byte for the guest, not a signal for kvmini.
    let t = on_tty(
        "--cmdline echo",
        &[("echo ready\n", b"\x03"), ("\x03", b"\x04")],
    );
    assert!(t.contains("echo ready\n\x03"), "{t:?}");
    assert!(t.contains("status=0"), "{t}");
    assert_restored(&t);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn terminal_restored_after_timeout_crash_and_bad_input() {
    for (args, status) in [
        ("--cmdline spin --timeout 500ms", 5),
        ("--cmdline fault", 4),
        ("--kernel /nonexistent", 2),
        ("--memory 64T", 2),
    ] {
        let t = on_tty(args, &[]);
        assert!(t.contains(&format!("status={status}")), "{args}: {t}");
        assert_restored(&t);
    }
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn every_verbosity_works_on_a_terminal() {
    // A vCPU thread logs the guest's stop at debug level; on a terminal the
    // logger must not make a call (TCGETS) the thread's filter forbids.
    for (args, debug_line) in [
        ("--cmdline exit=3", false),
        ("-v --cmdline exit=3", false),
        ("-vv --cmdline exit=3", true),
        ("-vvv --cmdline exit=3 --cpus 2", true),
        ("-vv --cmdline exit=3 --irqchip on", true),
    ] {
        let t = on_tty(args, &[]);
        assert!(t.contains("status=3"), "{args}: {t}");
        assert_eq!(t.contains("VM stopping"), debug_line, "{args}: {t}");
        assert_restored(&t);
    }
    let t = on_tty("RUST_LOG=trace --cmdline exit=3", &[]);
    assert!(t.contains("status=3") && t.contains("VM stopping"), "{t}");
    assert_restored(&t);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn the_echo_demo_reads_well_on_a_terminal() {
    // Enter sends CR: each typed line stays on its own line. The guest's
    // last output ("two", no newline) ends normally (Ctrl-D), and kvmini's
    // line still starts a line of its own.
    let raw = on_tty_raw(
        "--cmdline echo",
        &[
            ("echo ready\n", b"one\r"),
            ("one", b"two"),
            ("two", b"\x04"),
        ],
    );
    let t = raw.replace('\r', "");
    assert!(t.contains("one\ntwo"), "{raw:?}");
    assert!(
        t.contains("two\nkvmini: guest wrote 0 to the debug-exit port"),
        "{raw:?}"
    );
    assert_restored(&t);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn ctrl_a_capital_x_quits_too() {
    let t = on_tty("--cmdline echo", &[("echo ready\n", b"\x01X")]);
    assert!(t.contains("stopped from the console"), "{t}");
    assert!(t.contains("status=130"), "{t}");
    assert_restored(&t);
}
