//! Watching COM1's output: the Linux panic banner, and the user's
//! `--until`, `--fail-on` and `--input-after` patterns.

use regex::bytes::Regex;

/// What Linux prints first when it panics.
pub const PANIC_BANNER: &[u8] = b"Kernel panic - not syncing";

/// How far back a pattern can reach: a match may span line breaks and up
/// to this many bytes of output before the newest chunk.
pub const MATCH_WINDOW: usize = 4096;

/// Watches a byte stream for a fixed string with constant work per byte
/// (a KMP automaton), however the stream is split.
pub struct FixedWatch {
    needle: &'static [u8],
    fail: Vec<usize>,
    matched: usize,
}

impl FixedWatch {
    /// `needle` must not be empty.
    pub fn new(needle: &'static [u8]) -> Self {
        assert!(!needle.is_empty(), "FixedWatch needs a non-empty needle");
        let mut fail = vec![0; needle.len()];
        let mut k = 0;
        for i in 1..needle.len() {
            while k > 0 && needle[i] != needle[k] {
                k = fail[k - 1];
            }
            if needle[i] == needle[k] {
                k += 1;
            }
            fail[i] = k;
        }
        Self {
            needle,
            fail,
            matched: 0,
        }
    }

    /// Feeds bytes; true if the needle was completed anywhere in them.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut hit = false;
        for &b in bytes {
            while self.matched > 0 && self.needle[self.matched] != b {
                self.matched = self.fail[self.matched - 1];
            }
            if self.needle[self.matched] == b {
                self.matched += 1;
            }
            if self.matched == self.needle.len() {
                self.matched = self.fail[self.matched - 1];
                hit = true;
            }
        }
        hit
    }
}

/// A match the console acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Until(String),
    FailOn(String),
    InputAfter,
}

/// The user's patterns, matched over a sliding window of recent output.
pub struct PatternWatch {
    until: Vec<Regex>,
    fail_on: Vec<Regex>,
    input_after: Option<Regex>,
    window: Vec<u8>,
}

impl PatternWatch {
    pub fn new(until: Vec<Regex>, fail_on: Vec<Regex>, input_after: Option<Regex>) -> Self {
        Self {
            until,
            fail_on,
            input_after,
            window: Vec::with_capacity(2 * MATCH_WINDOW),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty() && self.fail_on.is_empty() && self.input_after.is_none()
    }

    /// Feeds new output; returns what matched. A pattern only counts when
    /// its match ends in the new bytes, so old output never matches twice.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        if self.is_empty() || bytes.is_empty() {
            return Vec::new();
        }
        let keep = self.window.len().min(MATCH_WINDOW);
        self.window.drain(..self.window.len() - keep);
        let new_from = self.window.len();
        self.window.extend_from_slice(bytes);
        let text = &self.window[..];
        let ends_in_new = |re: &Regex| re.find_iter(text).any(|m| m.end() > new_from);
        let mut events = Vec::new();
        for re in &self.fail_on {
            if ends_in_new(re) {
                events.push(Event::FailOn(re.as_str().to_string()));
            }
        }
        for re in &self.until {
            if ends_in_new(re) {
                events.push(Event::Until(re.as_str().to_string()));
            }
        }
        if self.input_after.as_ref().is_some_and(ends_in_new) {
            self.input_after = None;
            events.push(Event::InputAfter);
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn re(s: &str) -> Regex {
        Regex::new(s).unwrap()
    }

    #[test]
    fn fixed_watch_survives_any_split() {
        let text = b"[ 1.0] Kernel panic - not syncing: Attempted to kill init!";
        for split in 0..text.len() {
            let mut w = FixedWatch::new(PANIC_BANNER);
            let hit = w.feed(&text[..split]) | w.feed(&text[split..]);
            assert!(hit, "split at {split}");
        }
        let mut w = FixedWatch::new(b"aab");
        assert!(w.feed(b"aaab"));
        assert!(!FixedWatch::new(PANIC_BANNER).feed(b"Kernel panic - not syncin"));
    }

    #[test]
    fn patterns_match_across_chunks_and_lines() {
        let mut w = PatternWatch::new(vec![re("ALL TESTS\\s+PASSED")], vec![], None);
        assert!(w.feed(b"running...\nALL TE").is_empty());
        assert_eq!(
            w.feed(b"STS\nPASSED\n"),
            vec![Event::Until("ALL TESTS\\s+PASSED".into())]
        );
        // Already matched output does not match again.
        assert!(w.feed(b"more output").is_empty());
    }

    #[test]
    fn fail_on_is_reported_before_until() {
        let mut w = PatternWatch::new(vec![re("done")], vec![re("FAILED|panic")], None);
        let ev = w.feed(b"test 3 FAILED\ndone\n");
        assert_eq!(ev[0], Event::FailOn("FAILED|panic".into()));
        assert_eq!(ev[1], Event::Until("done".into()));
    }

    #[test]
    fn input_after_fires_once() {
        let mut w = PatternWatch::new(vec![], vec![], Some(re("\\$ $")));
        assert!(w.feed(b"booting\n").is_empty());
        assert_eq!(w.feed(b"~ $ "), vec![Event::InputAfter]);
        assert!(w.feed(b"\n~ $ ").is_empty());
    }

    #[test]
    fn window_is_bounded() {
        let mut w = PatternWatch::new(vec![re("never")], vec![], None);
        for _ in 0..1000 {
            w.feed(&[b'x'; 1000]);
        }
        assert!(w.window.len() <= MATCH_WINDOW + 1000);
    }
}
