//! kvmini on a terminal: raw mode while the guest runs, the Ctrl-A
//! escapes, and the terminal settings restored on every way out. Runs
//! kvmini under `script`, which gives it a pseudo-terminal as stdin.

mod common;
use common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs `kvmini ARGS` on a fresh pty, typing `keys` (in timed chunks).
/// Returns the transcript, with `stty -g` printed before and after, and
/// without the terminal's carriage returns.
fn on_tty(args: &str, keys: &[&[u8]]) -> String {
    on_tty_raw(args, keys).replace('\r', "")
}

/// [`on_tty`] with the carriage returns left in.
fn on_tty_raw(args: &str, keys: &[&[u8]]) -> String {
    assert!(
        std::path::Path::new("/usr/bin/script").exists(),
        "this test needs script(1) from util-linux to provide a terminal"
    );
    let cmd = format!("stty -g; {KVMINI} {args}; echo \"status=$?\"; stty -g");
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for k in keys {
        std::thread::sleep(Duration::from_millis(700));
        stdin.write_all(k).unwrap();
        stdin.flush().unwrap();
    }
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The two `stty -g` lines must be equal: the terminal is as it was.
#[track_caller]
fn assert_restored(t: &str) {
    let lines: Vec<&str> = t.lines().filter(|l| l.matches(':').count() > 10).collect();
    assert_eq!(lines.len(), 2, "transcript: {t}");
    assert_eq!(lines[0], lines[1], "terminal settings changed: {t}");
}

#[test]
fn ctrl_a_x_quits_and_the_terminal_is_restored() {
    if !kvm_available() {
        return;
    }
    let raw = on_tty_raw("--cmdline echo", &[b"hi", b"\x01x"]);
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
fn ctrl_a_ctrl_a_sends_a_literal_ctrl_a() {
    if !kvm_available() {
        return;
    }
    // The guest echoes what it gets; a literal Ctrl-A comes back.
    let t = on_tty("--cmdline echo", &[b"\x01\x01", b"z\x04"]);
    assert!(t.contains("echo ready\n\x01z"), "{t:?}");
    assert!(t.contains("status=0"), "{t}");
    assert_restored(&t);
}

#[test]
fn raw_mode_passes_control_keys_to_the_guest() {
    if !kvm_available() {
        return;
    }
    // Ctrl-C is a byte for the guest, not a signal for kvmini.
    let t = on_tty("--cmdline echo", &[b"\x03", b"\x04"]);
    assert!(t.contains("echo ready\n\x03"), "{t:?}");
    assert!(t.contains("status=0"), "{t}");
    assert_restored(&t);
}

#[test]
fn terminal_restored_after_timeout_crash_and_bad_input() {
    if !kvm_available() {
        return;
    }
    for (args, status) in [
        ("--cmdline spin --timeout 500ms", 5),
        ("--cmdline fault", 4),
        ("--kernel /nonexistent", 2),
        ("--memory 1000T", 2),
    ] {
        let t = on_tty(args, &[]);
        assert!(t.contains(&format!("status={status}")), "{args}: {t}");
        assert_restored(&t);
    }
}
