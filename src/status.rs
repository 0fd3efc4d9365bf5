//! kvmini's exit-status contract: the one table that `--help` prints, the
//! README shows (a test compares them) and [`code`] implements.

use crate::control::StopReason;

/// One row of the exit-status table: the status (a number, or a rule such
/// as `128+N`) and what it means, as the README's table spells them.
pub struct Row {
    pub status: &'static str,
    pub meaning: &'static str,
}

/// Every exit status kvmini can end with, in the README's order.
pub const TABLE: &[Row] = &[
    Row {
        status: "0",
        meaning: "the guest shut down cleanly: powered off, rebooted (with `--on-reboot exit`), \
                  or wrote 0 to the debug-exit port; with `--ktap`, the KTAP plan completed \
                  with no failure",
    },
    Row {
        status: "N",
        meaning: "the guest wrote N to the debug-exit port 0xf4 (with outb, outw or outl: the \
                  low byte, passed through unchanged; with `--debug-exit-status qemu`, \
                  2N+1 (modulo 256) as QEMU's isa-debug-exit gives)",
    },
    Row {
        status: "1",
        meaning: "internal error in kvmini or the host: a KVM call failed while running, \
                  the host ran out of memory or file descriptors",
    },
    Row {
        status: "2",
        meaning: "bad invocation or input: unknown flag, bad value, unreadable or invalid \
                  kernel/initramfs, output path that cannot be opened",
    },
    Row {
        status: "3",
        meaning:
            "KVM unavailable: `/dev/kvm` missing, not openable, or lacking a needed capability",
    },
    Row {
        status: "4",
        meaning: "the guest crashed: triple fault, KVM internal error, failed VM entry \
                  (the vCPU registers are printed on stderr)",
    },
    Row {
        status: "5",
        meaning: "`--timeout` expired",
    },
    Row {
        status: "6",
        meaning:
            "the guest kernel panicked (Linux's panic banner seen on COM1; see below the table)",
    },
    Row {
        status: "7",
        meaning: "a `--fail-on` pattern matched; with `--ktap`, a top-level test failed, \
                  or the guest shut down before the KTAP plan completed",
    },
    Row {
        status: "125",
        meaning: "with `--exec`: the guest init could not run the command (a module that does \
                  not load, a share it cannot mount; its `kvmini-init:` line on stderr says \
                  what); otherwise a guest that wrote 125",
    },
    Row {
        status: "128+N",
        meaning: "stopped by signal N: 130 SIGINT, 143 SIGTERM, 129 SIGHUP, also SIGQUIT, \
                  SIGUSR1, SIGUSR2 and SIGALRM; \
                  Ctrl-A x on the console counts as SIGINT, gdb's `kill` as SIGKILL (137)",
    },
];

/// The table as `--help` prints it: one row a line (or more), wrapped.
pub fn help_text() -> String {
    let mut out = String::from("Exit status (the last line on stderr says which applies):\n");
    for row in TABLE {
        let meaning = row.meaning.replace('`', "");
        let mut line = format!("  {:<6} ", row.status);
        let indent = line.len();
        for word in meaning.split(' ') {
            if line.len() + word.len() > 78 && line.len() > indent {
                out.push_str(line.trim_end());
                out.push('\n');
                line = " ".repeat(indent);
            }
            line.push_str(word);
            line.push(' ');
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

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
        StopReason::GuestExitQemu(n) => (n << 1) | 1,
        StopReason::Reset
        | StopReason::PowerOff
        | StopReason::Until(_)
        | StopReason::KtapPassed => CLEAN,
        StopReason::Panic => GUEST_PANIC,
        StopReason::Crash(_) => GUEST_CRASH,
        StopReason::Timeout => TIMEOUT,
        StopReason::Signal(sig) => SIGNAL_BASE.saturating_add(*sig as u8),
        StopReason::ConsoleQuit => SIGNAL_BASE + libc::SIGINT as u8,
        StopReason::GdbKill => SIGNAL_BASE + libc::SIGKILL as u8,
        StopReason::FailOn(_) | StopReason::KtapFailed(_) => FAIL_ON,
        StopReason::HostError(_) => INTERNAL_ERROR,
    }
}

/// The one line kvmini prints last on stderr for `reason`.
pub fn describe(reason: &StopReason) -> String {
    format!(
        "kvmini: {} (exit status {})",
        describe_short(reason),
        code(reason)
    )
}

/// What ended the VM, in a few words.
pub fn describe_short(reason: &StopReason) -> String {
    let what = match reason {
        StopReason::GuestExit(n) => format!("guest wrote {n} to the debug-exit port"),
        StopReason::GuestExitQemu(n) => {
            format!("guest wrote {n} to the debug-exit port (QEMU's rule: status ({n} << 1) | 1)")
        }
        StopReason::Reset => "guest rebooted".into(),
        StopReason::PowerOff => "guest powered off".into(),
        StopReason::Panic => "guest kernel panicked".into(),
        StopReason::Crash(what) => {
            format!("guest crashed: {}", what.lines().next().unwrap_or_default())
        }
        StopReason::Timeout => "timed out".into(),
        StopReason::Signal(sig) => format!("stopped by signal {}", signal_name(*sig)),
        StopReason::ConsoleQuit => "stopped from the console (Ctrl-A x)".into(),
        StopReason::GdbKill => "killed from gdb".into(),
        StopReason::Until(p) => format!("--until {p:?} matched"),
        StopReason::FailOn(p) => format!("--fail-on {p:?} matched"),
        StopReason::KtapPassed => "ktap: the plan completed with no failure".into(),
        StopReason::KtapFailed(what) => format!("ktap: {what}"),
        StopReason::HostError(e) => format!("internal error: {e}"),
    };
    what
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGQUIT => "SIGQUIT".into(),
        libc::SIGUSR1 => "SIGUSR1".into(),
        libc::SIGUSR2 => "SIGUSR2".into(),
        libc::SIGALRM => "SIGALRM".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's "## Exit status" table, as (status, meaning) pairs.
    fn readme_rows() -> Vec<(String, String)> {
        let readme = include_str!("../README.md");
        let section = readme
            .split("\n## Exit status\n")
            .nth(1)
            .expect("README has an Exit status section");
        section
            .lines()
            .skip_while(|l| !l.starts_with("| status"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split(" | ").collect();
                (cells[0].trim().into(), cells[1].trim().into())
            })
            .collect()
    }

    #[test]
    fn the_readme_shows_this_table() {
        let ours: Vec<(String, String)> = TABLE
            .iter()
            .map(|r| (r.status.into(), r.meaning.into()))
            .collect();
        assert_eq!(readme_rows(), ours);
    }

    #[test]
    fn help_lists_every_status() {
        let help = help_text();
        for row in TABLE {
            assert!(
                help.lines().any(|l| l.trim_start().starts_with(row.status)),
                "--help lacks {}:\n{help}",
                row.status
            );
        }
        // Every status `code` can return for a kvmini-chosen ending has a row.
        for n in [
            CLEAN,
            INTERNAL_ERROR,
            BAD_INPUT,
            KVM_UNAVAILABLE,
            GUEST_CRASH,
            TIMEOUT,
        ]
        .into_iter()
        .chain([GUEST_PANIC, FAIL_ON])
        {
            assert!(TABLE.iter().any(|r| r.status == n.to_string()), "{n}");
        }
        assert!(help.lines().all(|l| l.len() <= 80), "{help}");
    }

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
            (StopReason::GdbKill, 137),
            (StopReason::HostError("x".into()), INTERNAL_ERROR),
        ];
        for (reason, want) in table {
            assert_eq!(code(&reason), want, "{reason:?}");
            assert!(describe(&reason).ends_with(&format!("(exit status {want})")));
        }
    }
}
