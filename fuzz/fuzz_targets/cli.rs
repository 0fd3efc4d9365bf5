//! Fuzzes the whole command line: `Args::try_parse_from` then
//! `into_config`, on an argv made of kvmini's flag names, `--flag=value`
//! pairs and arbitrary strings.
//!
//! Invariants checked:
//! 1. Parsing never panics, and neither does rendering the error (main
//!    prints it) nor the help/version text clap produces as an "error".
//! 2. When parsing succeeds, the config upholds what the flags promise:
//!    memory > 0; 1 <= cpus <= MAX_CPUS (64); a timeout, if set, is longer
//!    than zero (README: "--timeout ... Stop the guest after this long");
//!    --serial-timestamps only with --serial-log, --input-after only with
//!    --input (both are `requires`); --serial2 given means COM2 exists.

#![no_main]

use arbitrary::Arbitrary;
use clap::Parser;
use libfuzzer_sys::fuzz_target;

use kvmini::cli::Args;
use kvmini::config::MAX_CPUS;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Flag {
    Kernel,
    Initramfs,
    Cmdline,
    Memory,
    Cpus,
    Serial,
    Serial2,
    SerialLog,
    SerialTimestamps,
    Until,
    FailOn,
    Input,
    InputAfter,
    BootTrace,
    NoSeccomp,
    Timeout,
    OnReboot,
    Boot,
    Verbose,
    V,
    Vv,
    Help,
    H,
    Version,
    CapitalV,
    Exec,
    ExecRo,
    SaveInitramfs,
    DashDash,
}

impl Flag {
    fn name(self) -> &'static str {
        match self {
            Flag::Kernel => "--kernel",
            Flag::Initramfs => "--initramfs",
            Flag::Cmdline => "--cmdline",
            Flag::Memory => "--memory",
            Flag::Cpus => "--cpus",
            Flag::Serial => "--serial",
            Flag::Serial2 => "--serial2",
            Flag::SerialLog => "--serial-log",
            Flag::SerialTimestamps => "--serial-timestamps",
            Flag::Until => "--until",
            Flag::FailOn => "--fail-on",
            Flag::Input => "--input",
            Flag::InputAfter => "--input-after",
            Flag::BootTrace => "--boot-trace",
            Flag::NoSeccomp => "--no-seccomp",
            Flag::Timeout => "--timeout",
            Flag::OnReboot => "--on-reboot",
            Flag::Boot => "--boot",
            Flag::Verbose => "--verbose",
            Flag::V => "-v",
            Flag::Vv => "-vv",
            Flag::Help => "--help",
            Flag::H => "-h",
            Flag::Version => "--version",
            Flag::CapitalV => "-V",
            Flag::Exec => "--exec",
            Flag::ExecRo => "--exec-ro",
            Flag::SaveInitramfs => "--save-initramfs",
            Flag::DashDash => "--",
        }
    }
}

/// Values the parsers care about, so the fuzzer reaches the Ok paths.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Known {
    Stdio,
    Null,
    Pty,
    File,
    Socket,
    Exit,
    Restart,
    Linux,
    Pvh,
}

impl Known {
    fn text(self) -> &'static str {
        match self {
            Known::Stdio => "stdio",
            Known::Null => "null",
            Known::Pty => "pty",
            Known::File => "file=",
            Known::Socket => "socket=",
            Known::Exit => "exit",
            Known::Restart => "restart",
            Known::Linux => "linux",
            Known::Pvh => "pvh",
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Arg {
    Flag(Flag),
    /// `--flag=value`
    Joined(Flag, String),
    Known(Known, String),
    Raw(String),
}

fn argv(args: &[Arg]) -> Vec<String> {
    let mut v = vec!["kvmini".to_string()];
    for a in args {
        v.push(match a {
            Arg::Flag(f) => f.name().to_string(),
            Arg::Joined(f, s) => format!("{}={s}", f.name()),
            Arg::Known(k, s) => format!("{}{s}", k.text()),
            Arg::Raw(s) => s.clone(),
        });
    }
    v
}

fuzz_target!(|args: Vec<Arg>| {
    let argv = argv(&args);
    let parsed = match Args::try_parse_from(&argv) {
        Ok(a) => a,
        Err(e) => {
            // main prints this; rendering must not panic either.
            let _ = e.render().to_string();
            let _ = e.kind();
            return;
        }
    };
    let serial2_given = parsed.serial2.is_some();
    let c = parsed.into_config();
    assert!(c.memory > 0, "{argv:?}: memory is zero");
    assert!(
        (1..=MAX_CPUS).contains(&c.cpus),
        "{argv:?}: cpus {} out of range",
        c.cpus
    );
    if let Some(t) = c.timeout {
        assert!(!t.is_zero(), "{argv:?}: a zero timeout was accepted");
    }
    assert!(
        !c.serial_timestamps || c.serial_log.is_some(),
        "{argv:?}: --serial-timestamps without --serial-log"
    );
    assert!(
        c.input_after.is_none() || c.input.is_some(),
        "{argv:?}: --input-after without --input"
    );
    assert_eq!(c.serial2.is_some(), serial2_given);
    // The rest of the config is derived without panicking.
    let _ = c.effective_cmdline();
    let _ = c.triple_fault_reboots();
});
