//! kvmini's command-line entry point: parse, run, report, exit.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use kvmini::{cli::Args, status};

/// A heap allocation that fails ends kvmini with one line and status 1
/// (src/fatal.rs), on whichever thread it happens.
#[global_allocator]
static ALLOCATOR: kvmini::fatal::Allocator = kvmini::fatal::Allocator;

/// Blocks the stop signals as the first code of kvmini's own to run (a
/// constructor, before Rust's runtime starts and before main), so that a
/// signal in the first milliseconds waits for the signalfd instead of
/// ending kvmini without its last line (see console::block_stop_signals).
/// Only the C library's own start-up comes before it.
#[used]
#[link_section = ".init_array"]
static BLOCK_STOP_SIGNALS_FIRST: extern "C" fn() = {
    extern "C" fn block() {
        let _ = kvmini::console::block_stop_signals();
    }
    block
};

fn main() -> ExitCode {
    // Whatever happens, leave the terminal as we found it, and never show
    // a user a backtrace: one line, then the internal-error status.
    kvmini::fatal::install_panic_hook();

    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            say(&format!(
                "kvmini: {} (see kvmini --help)",
                clap_line(&e.to_string())
            ));
            return ExitCode::from(status::BAD_INPUT);
        }
    };
    let level = match args.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    // Colour or not is decided here, once, on the main thread. Writing to
    // its Stderr target, env_logger (anstream) asks whether stderr is a
    // terminal (TCGETS) at every line, whatever the style, and a line logged
    // from a confined thread would make an ioctl its seccomp filter kills it
    // for. Through a pipe target it styles into a buffer and makes no call
    // but the write(2) of the finished line.
    use std::io::IsTerminal;
    let style = if std::io::stderr().is_terminal() {
        env_logger::WriteStyle::Always
    } else {
        env_logger::WriteStyle::Never
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_micros()
        .write_style(style)
        .target(env_logger::Target::Pipe(Box::new(std::io::stderr())))
        .init();

    let verbose = args.verbose > 0;
    let config = args.into_config();
    match kvmini::run(&config) {
        Ok(outcome) => {
            let reason = outcome.reason;
            if let Some(trace) = outcome.boot_trace {
                eprint!("{trace}");
            }
            if let kvmini::StopReason::Crash(detail) = &reason {
                // The register dump follows the first line.
                for line in detail.lines().skip(1) {
                    eprintln!("{line}");
                }
            }
            if let Some(line) = outcome.ktap_summary {
                eprintln!("{line}");
            }
            // --exec: the command's own status needs no word from kvmini
            // (its stderr is the command's); every other ending does.
            let commands_status = config.exec.is_some()
                && matches!(reason, kvmini::StopReason::GuestExit(_))
                && !verbose;
            if !commands_status {
                say(&status::describe(&reason));
            }
            ExitCode::from(status::code(&reason))
        }
        Err(e) => {
            let mut line = format!("kvmini: error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                // A cause some error already quotes in its own message is
                // said once.
                let cause = s.to_string();
                if !line.contains(&cause) {
                    line.push_str(": ");
                    line.push_str(&cause);
                }
                source = s.source();
            }
            // One line, whatever the causes' own formatting.
            let line: Vec<&str> = line.lines().map(str::trim).collect();
            say(&line.join(" "));
            ExitCode::from(e.exit_code())
        }
    }
}

/// clap's message on one line, all of it but the usage reminder: what is
/// wrong, the missing arguments it lists below, its tip ("a similar
/// argument exists") and the possible values.
fn clap_line(text: &str) -> String {
    let mut line = String::new();
    for part in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
    {
        let part = part.trim_start_matches("error: ");
        if !line.is_empty() {
            line.push_str(if part.starts_with("tip:") { "; " } else { " " });
        }
        line.push_str(part);
    }
    if line.is_empty() {
        line.push_str("invalid arguments");
    }
    line
}

/// Writes `line` and its newline to stderr in one write(2) (eprintln!
/// makes one per piece), so that a line is never split by other writers.
fn say(line: &str) {
    let mut text = String::with_capacity(line.len() + 1);
    text.push_str(line);
    text.push('\n');
    let _ = std::io::stderr().write_all(text.as_bytes());
}
