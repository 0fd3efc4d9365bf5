//! kvmini's exit-status contract. The README's table is this file.

use crate::control::StopReason;

/// The guest shut down cleanly: poweroff, reboot, debug-exit 0, `--until`.
pub const CLEAN: u8 = 0;
/// kvmini itself failed (a KVM call failed at run time, host I/O failed).
pub const INTERNAL_ERROR: u8 = 1;
/// Bad invocation or input: a flag, a kernel, an initramfs, a path.
pub const BAD_INPUT: u8 = 2;
/// /dev/kvm is missing, cannot be opened, or lacks what kvmini needs.
pub const KVM_UNAVAILABLE: u8 = 3;
/// The guest crashed: triple fault, KVM internal error, failed entry.
pub const GUEST_CRASH: u8 = 4;
/// `--timeout` expired before the guest ended.
pub const TIMEOUT: u8 = 5;
/// The guest kernel panicked.
pub const GUEST_PANIC: u8 = 6;
/// A `--fail-on` pattern matched the console output.
pub const FAIL_ON: u8 = 7;
/// Stopped by a signal: 128 + the signal number (130 SIGINT, 143 SIGTERM,
/// 129 SIGHUP); Ctrl-A x on the console counts as SIGINT.
pub const SIGNAL_BASE: u8 = 128;

/// The exit status for a VM that ended for `reason`.
pub fn code(reason: &StopReason) -> u8 {
    match reason {
        StopReason::GuestExit(n) => *n,
        StopReason::Reset | StopReason::PowerOff | StopReason::Until(_) => CLEAN,
        StopReason::Panic => GUEST_PANIC,
        StopReason::Crash(_) => GUEST_CRASH,
        StopReason::Timeout => TIMEOUT,
        StopReason::Signal(sig) => SIGNAL_BASE.saturating_add(*sig as u8),
        StopReason::ConsoleQuit => SIGNAL_BASE + libc::SIGINT as u8,
        StopReason::FailOn(_) => FAIL_ON,
        StopReason::HostError(_) => INTERNAL_ERROR,
    }
}

/// The one line kvmini prints last on stderr for `reason`.
pub fn describe(reason: &StopReason) -> String {
    let what = match reason {
        StopReason::GuestExit(n) => format!("guest wrote {n} to the debug-exit port"),
        StopReason::Reset => "guest rebooted".into(),
        StopReason::PowerOff => "guest powered off".into(),
        StopReason::Panic => "guest kernel panicked".into(),
        StopReason::Crash(what) => {
            format!("guest crashed: {}", what.lines().next().unwrap_or_default())
        }
        StopReason::Timeout => "timed out".into(),
        StopReason::Signal(sig) => format!("stopped by signal {}", signal_name(*sig)),
        StopReason::ConsoleQuit => "stopped from the console (Ctrl-A x)".into(),
        StopReason::Until(p) => format!("--until {p:?} matched"),
        StopReason::FailOn(p) => format!("--fail-on {p:?} matched"),
        StopReason::HostError(e) => format!("internal error: {e}"),
    };
    format!("kvmini: {what} (exit status {})", code(reason))
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_distinct_where_the_contract_says() {
        let table = [
            (StopReason::PowerOff, CLEAN),
            (StopReason::Reset, CLEAN),
            (StopReason::GuestExit(42), 42),
            (StopReason::Crash("x".into()), GUEST_CRASH),
            (StopReason::Timeout, TIMEOUT),
            (StopReason::Panic, GUEST_PANIC),
            (StopReason::FailOn("x".into()), FAIL_ON),
            (StopReason::Signal(libc::SIGINT), 130),
            (StopReason::Signal(libc::SIGTERM), 143),
            (StopReason::ConsoleQuit, 130),
            (StopReason::HostError("x".into()), INTERNAL_ERROR),
        ];
        for (reason, want) in table {
            assert_eq!(code(&reason), want, "{reason:?}");
            assert!(describe(&reason).ends_with(&format!("(exit status {want})")));
        }
    }
}
