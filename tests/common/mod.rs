//! Helpers for the integration tests: run the kvmini binary and look at
//! what it did.

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

pub const KVMINI: &str = env!("CARGO_BIN_EXE_kvmini");

// Tests that boot a guest need a usable /dev/kvm. build.rs probes for one
// when it runs (and treats KVMINI_SKIP_KVM_TESTS=1 as "none") and sets
// `cfg(kvm_usable)`; each such test carries, right after `#[test]`,
//
//     #[cfg_attr(
//         not(kvm_usable),
//         ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
//     )]
//
// so that without KVM the test runner reports it as ignored, with that
// reason, instead of it passing without running. (An attribute cannot take
// its reason from a constant, stable Rust has no macro_rules attributes,
// and a wrapping macro would re-indent every test body: so the attribute is
// spelt out on every test, always in this form.)
// `cargo test -- --include-ignored` runs them anyway; without KVM they
// then fail on kvmini's own "/dev/kvm" error.

/// What a kvmini run produced.
pub struct Run {
    pub status: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn last_stderr_line(&self) -> &str {
        self.stderr.lines().last().unwrap_or("")
    }

    /// No panic message or backtrace reached stderr.
    pub fn assert_no_panic(&self) {
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("RUST_BACKTRACE"),
            "kvmini panicked:\n{}",
            self.stderr
        );
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            status: o.status.code(),
            stdout: o.stdout,
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs kvmini with `args` and no input.
pub fn kvmini(args: &[&str]) -> Run {
    kvmini_with_input(args, None)
}

/// Runs kvmini with `args`, feeding `input` (if any) on stdin.
pub fn kvmini_with_input(args: &[&str], input: Option<&[u8]>) -> Run {
    let mut cmd = Command::new(KVMINI);
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG");
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().expect("spawn kvmini");
    if let Some(data) = input {
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    child.wait_with_output().expect("wait for kvmini").into()
}

/// A temporary directory removed at drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "kvmini-test-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// True if `out` is what a `flood=N` guest (seed 0) that kvmini stopped
/// (timeout, signal) left on stdout: the pattern's first bytes, byte-exact,
/// and, when the stop cut a line, the newline kvmini adds to end it.
pub fn is_cut_flood(out: &[u8]) -> bool {
    if out == flood_pattern(out.len(), 0) {
        return true;
    }
    match out.split_last() {
        Some((b'\n', guest)) => {
            guest == flood_pattern(guest.len(), 0) && guest.last() != Some(&b'\n')
        }
        _ => false,
    }
}

/// The byte stream the tiny guest's `flood=N seed=S` mode writes
/// (guest/src documents the same generator).
pub fn flood_pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|i| {
            if i % 65 == 64 {
                b'\n'
            } else {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                b'a' + (state % 26) as u8
            }
        })
        .collect()
}

pub fn exists(p: &str) -> bool {
    Path::new(p).exists()
}
