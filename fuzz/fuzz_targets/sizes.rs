//! Fuzzes the value parsers behind --memory, --timeout and --serial.
//!
//! Invariants checked:
//! 1. `parse_size`, `parse_duration` and `parse_serial` never panic, on
//!    any string.
//! 2. Whatever they accept is usable: sizes and durations are nonzero
//!    (both say "must be greater than zero").
//! 3. `parse_size` ignores ASCII case and surrounding whitespace; a bare
//!    decimal N is N bytes; N with K/M/G/T (any case, optionally followed
//!    by B or iB) is N * 1024^k, and an error when that overflows u64 or N
//!    is zero.
//! 4. `parse_duration`: N, Ns, Nms, Nm, Nmin and Nh are exactly N seconds,
//!    milliseconds, minutes and hours (N < 10^9), up to 100 years, and
//!    "too long" beyond; N.FFF s is within a nanosecond of the exact value;
//!    surrounding whitespace is ignored.
//! 5. `parse_serial` accepts exactly stdio, null, pty, file=PATH and
//!    socket=PATH with a nonempty PATH, and keeps PATH as given.

#![no_main]

use std::path::PathBuf;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use kvmini::cli::{parse_duration, parse_serial, parse_size};
use kvmini::config::SerialBackend;

#[derive(Arbitrary, Debug)]
struct Input {
    raw: String,
    n: u64,
    unit: u8,
    spelling: u8,
    pad: (bool, bool),
    secs: u32,
    millis: u16,
    dur_unit: u8,
    path: String,
}

fn check_raw(raw: &str) {
    if let Ok(n) = parse_size(raw) {
        assert!(n > 0, "parse_size({raw:?}) = 0");
        // Case and surrounding whitespace do not matter.
        assert_eq!(
            parse_size(&raw.to_ascii_uppercase()),
            Ok(n),
            "{raw:?} upper"
        );
        assert_eq!(
            parse_size(&raw.to_ascii_lowercase()),
            Ok(n),
            "{raw:?} lower"
        );
        assert_eq!(parse_size(&format!(" \t{raw}\n ")), Ok(n), "{raw:?} padded");
    }
    if let Ok(d) = parse_duration(raw) {
        assert!(
            !d.is_zero(),
            "parse_duration({raw:?}) = {d:?}, a zero duration"
        );
        assert_eq!(
            parse_duration(&format!(" {raw}\t")),
            Ok(d),
            "{raw:?} padded"
        );
    }
    match parse_serial(raw) {
        Ok(SerialBackend::Stdio) => assert_eq!(raw, "stdio"),
        Ok(SerialBackend::Null) => assert_eq!(raw, "null"),
        Ok(SerialBackend::Pty) => assert_eq!(raw, "pty"),
        Ok(SerialBackend::ExecStreams) => {
            panic!("parse_serial made --exec's own COM2 back end from {raw:?}")
        }
        Ok(SerialBackend::File(p)) => {
            let rest = raw.strip_prefix("file=").expect("file= prefix");
            assert!(!rest.is_empty());
            assert_eq!(p, PathBuf::from(rest));
        }
        Ok(SerialBackend::Socket(p)) => {
            let rest = raw.strip_prefix("socket=").expect("socket= prefix");
            assert!(!rest.is_empty());
            assert_eq!(p, PathBuf::from(rest));
        }
        Err(_) => {
            let ok = ["stdio", "null", "pty"].contains(&raw)
                || raw.strip_prefix("file=").is_some_and(|p| !p.is_empty())
                || raw.strip_prefix("socket=").is_some_and(|p| !p.is_empty());
            assert!(!ok, "parse_serial rejected {raw:?}");
        }
    }
}

fn check_size_round_trip(input: &Input) {
    let shift = [0u32, 10, 20, 30, 40][usize::from(input.unit % 5)];
    let letter = ["", "k", "m", "g", "t"][usize::from(input.unit % 5)];
    let letter = if input.spelling & 1 != 0 {
        letter.to_ascii_uppercase()
    } else {
        letter.to_string()
    };
    // A byte suffix only follows a unit letter ("4096b" is not special).
    let tail = if shift == 0 {
        ""
    } else {
        ["", "b", "B", "ib", "iB", "IB"][usize::from(input.spelling / 2 % 6)]
    };
    let (pre, post) = (
        if input.pad.0 { " " } else { "" },
        if input.pad.1 { "\t" } else { "" },
    );
    let n = input.n;
    let text = format!("{pre}{n}{letter}{tail}{post}");
    let got = parse_size(&text);
    match n.checked_mul(1u64 << shift) {
        _ if n == 0 => assert!(got.is_err(), "{text:?} accepted as {got:?}"),
        Some(v) => assert_eq!(got, Ok(v), "{text:?}"),
        None => assert!(got.is_err(), "{text:?} overflows but gave {got:?}"),
    }
    // Leading zeros are still the same number.
    if n > 0 {
        if let Ok(v) = got {
            assert_eq!(parse_size(&format!("00{n}{letter}{tail}")), Ok(v));
        }
    }
}

fn check_duration_round_trip(input: &Input) {
    let n = u64::from(input.secs) % 1_000_000_000;
    let (unit, want) = match input.dur_unit % 7 {
        0 => ("", Duration::from_secs(n)),
        1 => ("s", Duration::from_secs(n)),
        2 => ("ms", Duration::from_millis(n)),
        3 => ("m", Duration::from_secs(n * 60)),
        4 => ("min", Duration::from_secs(n * 60)),
        5 => ("h", Duration::from_secs(n * 3600)),
        _ => {
            // N.FFF seconds: within a nanosecond of exact (f64 parsing).
            let n = n % 1_000_000;
            let ms = u64::from(input.millis) % 1000;
            let text = format!("{n}.{ms:03}s");
            let exact = Duration::from_millis(n * 1000 + ms);
            match parse_duration(&text) {
                Ok(d) => {
                    let diff = d.abs_diff(exact);
                    assert!(diff <= Duration::from_nanos(1), "{text:?} = {d:?}");
                }
                Err(e) => assert!(exact.is_zero(), "{text:?} rejected: {e}"),
            }
            return;
        }
    };
    let text = format!("{n}{unit}");
    // cli.rs caps durations at 100 years (365-day years).
    let max = Duration::from_secs(100 * 365 * 86400);
    match parse_duration(&text) {
        Ok(d) => {
            assert_eq!(d, want, "{text:?}");
            assert!(d <= max, "{text:?} accepted beyond 100 years");
        }
        Err(e) if want > max => assert!(e.contains("too long"), "{text:?}: {e}"),
        Err(e) => assert_eq!(n, 0, "{text:?} rejected: {e}"),
    }
}

fn check_serial_round_trip(path: &str) {
    for (kind, make) in [
        ("file=", SerialBackend::File as fn(PathBuf) -> SerialBackend),
        ("socket=", SerialBackend::Socket),
    ] {
        let got = parse_serial(&format!("{kind}{path}"));
        if path.is_empty() {
            assert!(got.is_err(), "{kind} with no path");
        } else {
            assert_eq!(got, Ok(make(PathBuf::from(path))));
        }
    }
}

fuzz_target!(|input: Input| {
    check_raw(&input.raw);
    check_size_round_trip(&input);
    check_duration_round_trip(&input);
    check_serial_round_trip(&input.path);
});
