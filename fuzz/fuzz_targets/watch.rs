//! Fuzzes the console watchers on a byte stream split into arbitrary chunks.
//!
//! The stream is built from segments (raw bytes, repeated runs, planted
//! needles) so that it can be longer than MATCH_WINDOW and still contain
//! matches. Every verdict is compared with a naive search over the whole
//! stream.
//!
//! Invariants checked:
//! 1. FixedWatch: `feed(chunk)` is true exactly when an occurrence of the
//!    needle (overlapping ones included) ends inside that chunk, however the
//!    stream is split. Needles are nonempty (see the note at `needle`).
//! 2. PatternWatch, for fixed-length patterns (a short literal, `A.{N}B`,
//!    and a literal of about MATCH_WINDOW bytes, whose matches may reach
//!    further back than the window):
//!    let an occurrence be "within reach" of chunk k when it ends inside
//!    chunk k and starts at most MATCH_WINDOW bytes before chunk k (watch.rs:
//!    "a match may span ... up to this many bytes of output before the
//!    newest chunk"). Then
//!    a. soundness and the window bound: an event in chunk k implies an
//!       occurrence within reach of chunk k. A watcher that kept more than
//!       MATCH_WINDOW + chunk bytes would report long-literal occurrences
//!       that start further back;
//!    b. no missed first match: the first chunk with an occurrence within
//!       reach reports the event, and no chunk before it does;
//!    c. --input-after fires once, at that first chunk, and never again;
//!    d. fail-on events come before until events, which come before
//!       input-after.
//!    After the first until/fail-on match the VM stops, so a later overlapping
//!    occurrence (which the non-overlapping regex scan may skip) is not
//!    required to be reported again.

#![no_main]

use std::collections::HashMap;
use std::sync::Mutex;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use regex::bytes::Regex;

use kvmini::console::watch::{Event, FixedWatch, PatternWatch, MATCH_WINDOW, PANIC_BANNER};

/// Longest stream built from one input.
const MAX_STREAM: usize = 24 * 1024;
/// Most chunks (each PatternWatch feed rescans its window).
const MAX_CHUNKS: usize = 96;

#[derive(Arbitrary, Debug)]
enum Segment {
    Bytes(Vec<u8>),
    Run(u8, u16),
    Needle,
    LongNeedle,
    Banner,
    GapStart,
    GapEnd,
}

#[derive(Arbitrary, Debug)]
enum NeedleSel {
    Banner,
    Static(u8),
    Custom(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    needle: NeedleSel,
    long_unit: u8,
    long_len: u8,
    gap: u8,
    gap_bytes: (u8, u8),
    with_until: bool,
    /// The long literal costs a cold lazy-DFA per input: only when asked.
    with_long: bool,
    with_input_after: bool,
    segments: Vec<Segment>,
    /// Chunk lengths; whatever is left over is the last chunk.
    cuts: Vec<u16>,
}

const LONG_SEEDS: &[u64] = &[1, 0x9e37_79b9_7f4a_7c15, 42];

/// xorshift64 bytes: a fixed, non-periodic literal.
fn pseudo_random(mut x: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
const LONG_LENS: &[usize] = &[
    MATCH_WINDOW - 100,
    MATCH_WINDOW - 1,
    MATCH_WINDOW,
    MATCH_WINDOW + 1,
    MATCH_WINDOW + 2,
    MATCH_WINDOW + 64,
    MATCH_WINDOW + 700,
];

/// KMP corner cases: periodic needles, self-overlapping prefixes.
const STATIC_NEEDLES: &[&[u8]] = &[
    b"a",
    b"aa",
    b"aab",
    b"aba",
    b"abab",
    b"abaab",
    b"aabaabaaa",
    b"abcabd",
    b"\0\0\x01",
    b"\n",
    b"aaaaaaaa",
];

/// FixedWatch takes a `&'static` needle. Custom needles are interned in a
/// bounded table (kept reachable, so no leak is reported).
/// Note: FixedWatch::new(b"") would panic on the first fed byte (it indexes
/// needle[0]); kvmini only ever builds it with PANIC_BANNER, so empty
/// needles are not fuzzed.
fn needle(sel: &NeedleSel) -> &'static [u8] {
    static POOL: Mutex<Option<HashMap<Vec<u8>, &'static [u8]>>> = Mutex::new(None);
    match sel {
        NeedleSel::Banner => PANIC_BANNER,
        NeedleSel::Static(i) => STATIC_NEEDLES[usize::from(*i) % STATIC_NEEDLES.len()],
        NeedleSel::Custom(v) => {
            let v = &v[..v.len().min(32)];
            if v.is_empty() {
                return PANIC_BANNER;
            }
            let mut pool = POOL.lock().unwrap();
            let pool = pool.get_or_insert_with(HashMap::new);
            if let Some(n) = pool.get(v) {
                return n;
            }
            if pool.len() >= 4096 {
                return STATIC_NEEDLES[v.len() % STATIC_NEEDLES.len()];
            }
            let n: &'static [u8] = Box::leak(v.to_vec().into_boxed_slice());
            pool.insert(v.to_vec(), n);
            n
        }
    }
}

/// Compiling `A.{N}B` for large N dominates the run time: compiled regexes
/// are cached (a bounded table; Regex clones share the compiled program).
fn regex(pattern: &str) -> Regex {
    static CACHE: Mutex<Option<HashMap<String, Regex>>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap();
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(re) = cache.get(pattern) {
        return re.clone();
    }
    // A lazy DFA big enough for the long literal: with the default cache
    // it gives up on a ~4 KiB literal and the PikeVM makes each feed take
    // O(window * pattern) steps, seconds under ASan.
    let re = regex::bytes::RegexBuilder::new(pattern)
        .dfa_size_limit(256 << 20)
        .build()
        .unwrap();
    if cache.len() < 2048 {
        cache.insert(pattern.to_string(), re.clone());
    }
    re
}

fn literal(bytes: &[u8]) -> String {
    let mut s = String::from("(?-u)");
    for b in bytes {
        s.push_str(&format!("\\x{b:02x}"));
    }
    s
}

/// Start positions of every occurrence of a fixed-length pattern.
fn occurrences(stream: &[u8], len: usize, is_at: impl Fn(usize) -> bool) -> Vec<usize> {
    (0..stream.len().saturating_sub(len - 1))
        .filter(|&s| is_at(s))
        .collect()
}

/// Is some occurrence (start s, length len) within reach of chunk a..b?
fn within_reach(starts: &[usize], len: usize, a: usize, b: usize) -> bool {
    starts
        .iter()
        .any(|&s| s + len > a && s + len <= b && s + MATCH_WINDOW >= a)
}

/// Does some occurrence end in a..b (no reach limit)?
fn ends_in(starts: &[usize], len: usize, a: usize, b: usize) -> bool {
    starts.iter().any(|&s| s + len > a && s + len <= b)
}

fuzz_target!(|input: Input| {
    let needle = needle(&input.needle);
    let gap = usize::from(input.gap % 64);
    // A pseudo-random literal about as long as the window (a few fixed ones,
    // so that their compiled regexes are cached). Not periodic: a lazy DFA
    // for a periodic 4 KiB literal costs O(L^2) to build, seconds under ASan;
    // overlapping matches are the short needles' job.
    let seed = LONG_SEEDS[usize::from(input.long_unit) % LONG_SEEDS.len()];
    let long_len = LONG_LENS[usize::from(input.long_len) % LONG_LENS.len()];
    let long = pseudo_random(seed, long_len);
    let (ga, gb) = input.gap_bytes;

    // Build the stream.
    let mut stream = Vec::new();
    for seg in &input.segments {
        let room = MAX_STREAM - stream.len();
        match seg {
            Segment::Bytes(b) => stream.extend_from_slice(&b[..b.len().min(room)]),
            Segment::Run(b, n) => stream.extend(std::iter::repeat_n(*b, usize::from(*n).min(room))),
            Segment::Needle => stream.extend_from_slice(&needle[..needle.len().min(room)]),
            Segment::LongNeedle => stream.extend_from_slice(&long[..long.len().min(room)]),
            Segment::Banner => {
                stream.extend_from_slice(&PANIC_BANNER[..PANIC_BANNER.len().min(room)])
            }
            Segment::GapStart => stream.extend(std::iter::once(ga).take(room)),
            Segment::GapEnd => stream.extend(std::iter::once(gb).take(room)),
        }
        if stream.len() >= MAX_STREAM {
            break;
        }
    }

    // Split it.
    let mut chunks = Vec::new();
    let mut at = 0;
    for &c in input.cuts.iter().take(MAX_CHUNKS - 1) {
        let end = (at + usize::from(c)).min(stream.len());
        chunks.push(at..end);
        at = end;
    }
    chunks.push(at..stream.len());

    // 1. FixedWatch against a naive search.
    let fixed_starts = occurrences(&stream, needle.len(), |s| stream[s..].starts_with(needle));
    let mut fw = FixedWatch::new(needle);
    for r in &chunks {
        let hit = fw.feed(&stream[r.clone()]);
        assert_eq!(
            hit,
            ends_in(&fixed_starts, needle.len(), r.start, r.end),
            "FixedWatch({needle:02x?}) on chunk {r:?}"
        );
    }

    // 2. PatternWatch: fail-on = the literal needle and the long literal,
    //    until = A.{gap}B, input-after = the literal needle again.
    let lit = literal(needle);
    let long_lit = literal(&long);
    let long_starts = occurrences(&stream, long_len, |s| stream[s..].starts_with(&long));
    let gap_re = format!("(?s-u)\\x{ga:02x}.{{{gap}}}\\x{gb:02x}");
    let until = if input.with_until {
        vec![regex(&gap_re)]
    } else {
        vec![]
    };
    let input_after = input.with_input_after.then(|| regex(&lit));
    let mut fail_on = vec![regex(&lit)];
    if input.with_long {
        fail_on.push(regex(&long_lit));
    }
    let mut pw = PatternWatch::new(until, fail_on, input_after);
    let gap_len = gap + 2;
    let gap_starts = occurrences(&stream, gap_len, |s| {
        stream[s] == ga && stream[s + gap + 1] == gb
    });

    let mut fail_on_seen = false;
    let mut long_seen = false;
    let mut until_seen = false;
    let mut input_after_seen = false;
    for r in &chunks {
        let events = pw.feed(&stream[r.clone()]);
        let ctx = || format!("chunk {r:?} of {}, events {events:?}", stream.len());
        let rank = |e: &Event| match e {
            Event::FailOn(_) => 0,
            Event::Until(_) => 1,
            Event::InputAfter => 2,
        };
        assert!(
            events.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])),
            "{}",
            ctx()
        );
        // Same kind: in the order the patterns were given, each once.
        assert!(events.windows(2).all(|w| w[0] != w[1]), "{}", ctx());
        if let (Some(a), Some(b)) = (
            events.iter().position(|e| *e == Event::FailOn(lit.clone())),
            events
                .iter()
                .position(|e| *e == Event::FailOn(long_lit.clone())),
        ) {
            assert!(a < b, "{}", ctx());
        }

        let lit_reach = within_reach(&fixed_starts, needle.len(), r.start, r.end);
        let gap_reach = within_reach(&gap_starts, gap_len, r.start, r.end);

        let fail_on = events.iter().any(|e| *e == Event::FailOn(lit.clone()));
        assert!(
            !fail_on || lit_reach,
            "fail-on without a match in reach: {}",
            ctx()
        );
        if !fail_on_seen {
            assert_eq!(fail_on, lit_reach, "first fail-on: {}", ctx());
        }
        fail_on_seen |= fail_on;

        let long_reach = within_reach(&long_starts, long_len, r.start, r.end);
        let long_ev = events.iter().any(|e| *e == Event::FailOn(long_lit.clone()));
        assert!(
            !long_ev || long_reach,
            "long literal ({long_len} bytes) reported beyond the window: chunk {r:?}, starts {:?}",
            &long_starts[..long_starts.len().min(8)]
        );
        if !long_seen && input.with_long {
            assert_eq!(long_ev, long_reach, "first long literal: chunk {r:?}");
        }
        long_seen |= long_ev;

        let until = events.iter().any(|e| matches!(e, Event::Until(_)));
        if input.with_until {
            assert!(
                !until || gap_reach,
                "until without a match in reach: {}",
                ctx()
            );
            if !until_seen {
                assert_eq!(until, gap_reach, "first until: {}", ctx());
            }
        } else {
            assert!(!until, "{}", ctx());
        }
        until_seen |= until;

        let ia = events.iter().any(|e| matches!(e, Event::InputAfter));
        if input.with_input_after && !input_after_seen {
            assert_eq!(ia, lit_reach, "first input-after: {}", ctx());
        } else {
            assert!(!ia, "input-after fired twice or unasked: {}", ctx());
        }
        input_after_seen |= ia;
    }
});
