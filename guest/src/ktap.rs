//! `ktap=SPEC`: prints a KTAP report described by SPEC on COM1, for the
//! tests of kvmini's `--ktap`.
//!
//! SPEC is a word of items, one test each: `p` passes, `f` fails (after a
//! diagnostic line), `s` is skipped, `(...)` is a suite of the items inside
//! (it fails if any of them fails), and `!` stops the report right there
//! (the plans still announce every item). Tests are named by their path:
//! `case_2`, `suite_3`, `case_3_1`. Options: `tap13` prints "TAP version 13"
//! with kselftest's "# " nesting instead of KTAP's four spaces; `stamp`
//! starts every line with a printk-like timestamp; `ktap-end=W` says what
//! follows the report (or its `!`): `exit` (status 0, the default),
//! `poweroff`, `fault` (a triple fault), `panic` (Linux's banner, then a
//! reset) or `spin` (nothing more, for a timeout).

use crate::io::{self, COM1};

#[derive(Clone, Copy)]
pub struct Style {
    pub tap13: bool,
    pub stamp: bool,
}

/// Path of the test being printed: its numbers, outermost first.
struct Path {
    nums: [u64; 16],
    len: usize,
}

/// Starts a line of nesting level `depth`.
fn indent(style: Style, depth: usize) {
    if style.stamp {
        io::puts(COM1, b"[    0.000000] ");
    }
    for _ in 0..depth {
        io::puts(COM1, if style.tap13 { b"# " } else { b"    " });
    }
}

fn put_line(style: Style, depth: usize, parts: &[&[u8]]) {
    indent(style, depth);
    for p in parts {
        io::puts(COM1, p);
    }
    io::puts(COM1, b"\n");
}

fn put_name(kind: &[u8], path: &Path) {
    let mut digits = [0u8; 20];
    io::puts(COM1, kind);
    for &n in &path.nums[..path.len] {
        io::puts(COM1, b"_");
        io::puts(COM1, io::fmt_u64(n, &mut digits));
    }
}

/// The end of the item starting at `spec[0]` (a letter or a group).
fn item_len(spec: &[u8]) -> usize {
    if spec.first() != Some(&b'(') {
        return 1;
    }
    let mut depth = 0usize;
    for (i, &c) in spec.iter().enumerate() {
        match c {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    spec.len()
}

fn count_items(spec: &[u8]) -> u64 {
    let (mut i, mut n) = (0, 0);
    while i < spec.len() {
        if spec[i] != b'!' {
            n += 1;
        }
        i += item_len(&spec[i..]);
    }
    n
}

/// Prints one level's tests; returns (failed, stopped at a `!`).
fn level(style: Style, spec: &[u8], depth: usize, path: &mut Path) -> (bool, bool) {
    let mut digits = [0u8; 20];
    put_line(style, depth, &[b"1..", io::fmt_u64(count_items(spec), &mut digits)]);
    let (mut i, mut num, mut failed) = (0, 0u64, false);
    while i < spec.len() {
        let len = item_len(&spec[i..]);
        let item = &spec[i..i + len];
        i += len;
        if item == b"!" {
            return (failed, true);
        }
        num += 1;
        if path.len == path.nums.len() {
            continue;
        }
        path.nums[path.len] = num;
        path.len += 1;
        let (item_failed, skip, stopped) = match item[0] {
            b'(' => {
                let inner = &item[1..len.saturating_sub(1).max(1)];
                put_line(style, depth + 1, &[version(style)]);
                if !style.tap13 {
                    indent(style, depth + 1);
                    io::puts(COM1, b"# Subtest: ");
                    put_name(b"suite", path);
                    io::puts(COM1, b"\n");
                }
                let (f, stop) = level(style, inner, depth + 1, path);
                (f, false, stop)
            }
            b'f' => {
                indent(style, depth);
                io::puts(COM1, b"# ");
                put_name(b"case", path);
                io::puts(COM1, b": failed on purpose\n");
                (true, false, false)
            }
            b's' => (false, true, false),
            _ => (false, false, false),
        };
        if stopped {
            return (failed || item_failed, true);
        }
        failed |= item_failed;
        indent(style, depth);
        io::puts(COM1, if item_failed { b"not ok " } else { b"ok " });
        io::puts(COM1, io::fmt_u64(num, &mut digits));
        io::puts(COM1, b" ");
        put_name(if item[0] == b'(' { b"suite" } else { b"case" }, path);
        if skip {
            io::puts(COM1, b" # SKIP skipped on purpose");
        }
        io::puts(COM1, b"\n");
        path.len -= 1;
    }
    (failed, false)
}

fn version(style: Style) -> &'static [u8] {
    if style.tap13 {
        b"TAP version 13"
    } else {
        b"KTAP version 1"
    }
}

/// Prints the report; then the caller does what `ktap-end=` says.
pub fn report(spec: &[u8], style: Style) {
    put_line(style, 0, &[version(style)]);
    let mut path = Path {
        nums: [0; 16],
        len: 0,
    };
    level(style, spec, 0, &mut path);
}
