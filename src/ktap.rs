//! KTAP verdicts from COM1's output (`--ktap`): the test reports kunit and
//! kselftest print (KTAP version 1, and TAP version 13 as kselftest's
//! runner prints it), read line by line as they arrive, nested subtests
//! included, turned into the VM's verdict, a summary and a JUnit file.
//!
//! What it accepts, and why each rule:
//! - The report starts at the first "KTAP version N" or "TAP version N"
//!   line: everything before it (a kernel's boot log) is not the report.
//!   What precedes that marker on its line, if it is only blanks, is the
//!   top level's indentation.
//! - A printk timestamp ("[    1.234567] ", also with a caller id
//!   "[    T1] " after it) is removed from every line first: kunit's report
//!   reaches the console through printk.
//! - A subtest is opened by a version line, a "# Subtest: NAME" line or a
//!   plan one level deeper than the current test: four more spaces (KTAP)
//!   or "# " (kselftest's runner prefixes each test's own TAP so). It ends
//!   at the next plan or result line of an outer level; other lines there
//!   (the kernel's own messages interleaved at column 0) are ignored and
//!   close nothing.
//! - "ok N NAME", "not ok N NAME", with "# SKIP" (or "# TODO") after the
//!   name: skipped, not failed. "Bail out!" fails the run.
//! - The counts (passed, failed, skipped) are of leaf tests, those without
//!   subtests; a suite that fails although none of its subtests did counts
//!   as one failure itself, so a failing run never reports 0 failed.
//!
//! Every byte is the guest's and hostile: lines are cut at [`MAX_LINE`],
//! nesting stops at [`MAX_DEPTH`], at most [`MAX_CASES`] test cases and
//! [`MAX_DIAG_BYTES`] of diagnostics per case are kept (the rest is
//! counted, not stored), so memory stays bounded whatever the guest prints.

use std::fmt::Write as _;

/// Longest line kept; the rest of a longer one is dropped.
pub const MAX_LINE: usize = 4096;
/// Deepest nesting followed; deeper subtests are read as their parent's.
pub const MAX_DEPTH: usize = 16;
/// Test cases stored for the JUnit file; later ones are only counted.
pub const MAX_CASES: usize = 10_000;
/// Diagnostic lines kept per test case, and their bytes.
pub const MAX_DIAG_LINES: usize = 64;
pub const MAX_DIAG_BYTES: usize = 8192;

/// How one test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
}

/// One test case for the JUnit file.
#[derive(Debug, Clone)]
pub struct Case {
    /// The names of the suites it is in, joined with '.'; empty at the top.
    pub suite: String,
    pub name: String,
    pub outcome: Outcome,
    /// The result line as printed (without its indentation).
    pub line: String,
    /// The diagnostic lines printed since the previous result at its level.
    pub diag: Vec<String>,
}

/// The run's verdict, once the report decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The top-level plan completed with no failure.
    Passed,
    /// A top-level test failed (its result line), or the report bailed out.
    Failed(String),
}

/// The counts of leaf tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

struct Level {
    /// The exact bytes every line of this level starts with.
    prefix: Vec<u8>,
    name: String,
    plan: Option<u64>,
    results: u64,
    /// A subtest was opened since this level's last result.
    had_child: bool,
    /// `counts.failed` when that subtest opened.
    failed_before_child: u64,
    diag: Vec<String>,
    diag_bytes: usize,
}

impl Level {
    fn new(prefix: Vec<u8>) -> Self {
        Self {
            prefix,
            name: String::new(),
            plan: None,
            results: 0,
            had_child: false,
            failed_before_child: 0,
            diag: Vec::new(),
            diag_bytes: 0,
        }
    }
}

/// A KTAP reader fed with COM1's bytes.
pub struct Ktap {
    keep_going: bool,
    line: Vec<u8>,
    /// Empty until the report starts; `levels[0]` is the top level.
    levels: Vec<Level>,
    counts: Counts,
    cases: Vec<Case>,
    cases_dropped: u64,
    first_failure: Option<String>,
    last_top: Option<String>,
    verdict: Option<Verdict>,
}

/// What one line of a level says.
enum Line<'a> {
    Version,
    Subtest(&'a str),
    Plan(u64),
    Result {
        ok: bool,
        name: &'a str,
        directive: &'a str,
    },
    Diag(&'a str),
    BailOut,
    Other,
}

fn number(s: &str) -> Option<(u64, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n = s[..end].parse().ok()?;
    Some((n, &s[end..]))
}

fn is_version(s: &str) -> bool {
    let rest = s
        .strip_prefix("KTAP version ")
        .or_else(|| s.strip_prefix("TAP version "));
    rest.and_then(number)
        .is_some_and(|(_, tail)| tail.trim().is_empty())
}

fn classify(s: &str) -> Line<'_> {
    let s = s.trim_end();
    if is_version(s) {
        return Line::Version;
    }
    if let Some(name) = s.strip_prefix("# Subtest:") {
        return Line::Subtest(name.trim());
    }
    if let Some(rest) = s.strip_prefix("1..") {
        if let Some((n, tail)) = number(rest) {
            // A plan may carry a comment ("1..0 # SKIP ...").
            if tail.is_empty() || tail.starts_with(' ') {
                return Line::Plan(n);
            }
        }
    }
    let (ok, rest) = if let Some(r) = s.strip_prefix("ok ") {
        (true, r)
    } else if let Some(r) = s.strip_prefix("not ok ") {
        (false, r)
    } else if s.starts_with("Bail out!") {
        return Line::BailOut;
    } else if let Some(d) = s.strip_prefix('#') {
        return Line::Diag(d.strip_prefix(' ').unwrap_or(d));
    } else {
        return Line::Other;
    };
    let Some((_, rest)) = number(rest) else {
        return Line::Other;
    };
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return Line::Other;
    }
    let rest = rest.trim_start();
    let rest = rest.strip_prefix("- ").unwrap_or(rest);
    let (name, directive) = match rest.find('#') {
        Some(i) => (rest[..i].trim(), rest[i + 1..].trim()),
        None => (rest.trim(), ""),
    };
    Line::Result {
        ok,
        name,
        directive,
    }
}

/// The line without printk's timestamp and caller id, if it has them.
fn strip_printk(mut line: &[u8]) -> &[u8] {
    for _ in 0..2 {
        let Some(rest) = line.strip_prefix(b"[") else {
            break;
        };
        let Some(end) = rest.iter().take(24).position(|&b| b == b']') else {
            break;
        };
        let inside = &rest[..end];
        let stamp = inside
            .iter()
            .all(|&b| b == b' ' || b == b'.' || b.is_ascii_digit())
            && inside.iter().any(u8::is_ascii_digit);
        // CONFIG_PRINTK_CALLER: "[    T1]" (a task) or "[    C0]" (a CPU).
        let caller = match inside.trim_ascii_start() {
            [b'T' | b'C', digits @ ..] => {
                !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
            }
            _ => false,
        };
        if !(stamp || caller) {
            break;
        }
        line = &rest[end + 1..];
        line = line.strip_prefix(b" ").unwrap_or(line);
    }
    line
}

impl Ktap {
    /// `keep_going`: a top-level failure does not end the run; the verdict
    /// waits for the plan to complete.
    pub fn new(keep_going: bool) -> Self {
        Self {
            keep_going,
            line: Vec::new(),
            levels: Vec::new(),
            counts: Counts::default(),
            cases: Vec::new(),
            cases_dropped: 0,
            first_failure: None,
            last_top: None,
            verdict: None,
        }
    }

    /// Feeds COM1 output, split anywhere; returns the verdict the first
    /// time the report decides one. Nothing after the verdict counts.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<Verdict> {
        if self.verdict.is_some() {
            return None;
        }
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                self.handle(&line);
                self.line = line;
                self.line.clear();
                if self.verdict.is_some() {
                    return self.verdict.clone();
                }
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
        None
    }

    pub fn keep_going(&self) -> bool {
        self.keep_going
    }

    pub fn verdict(&self) -> Option<&Verdict> {
        self.verdict.as_ref()
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub fn cases(&self) -> &[Case] {
        &self.cases
    }

    /// True once a version line started the report.
    pub fn started(&self) -> bool {
        !self.levels.is_empty()
    }

    /// "ktap: N passed, N failed, N skipped", and how far an unfinished
    /// report got.
    pub fn summary(&self) -> String {
        let c = self.counts;
        let mut s = format!(
            "ktap: {} passed, {} failed, {} skipped",
            c.passed, c.failed, c.skipped
        );
        if self.verdict.is_none() {
            let _ = write!(s, " ({})", self.progress());
        }
        s
    }

    /// How far the report got: for an ending that came before its verdict.
    pub fn progress(&self) -> String {
        let Some(top) = self.levels.first() else {
            return "no KTAP report seen on COM1".into();
        };
        let plan = match top.plan {
            Some(n) => format!("{} of {n} top-level results", top.results),
            None => format!("{} top-level results, no plan yet", top.results),
        };
        match &self.last_top {
            Some(last) => format!("report incomplete: {plan}, the last \"{last}\""),
            None => format!("report incomplete: {plan}"),
        }
    }

    fn handle(&mut self, raw: &[u8]) {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = strip_printk(raw);
        if self.levels.is_empty() {
            self.start(line);
            return;
        }
        if !line.starts_with(&self.levels[0].prefix) {
            return;
        }
        let mut d = self.levels.len() - 1;
        while !line.starts_with(&self.levels[d].prefix) {
            d -= 1;
        }
        let text = String::from_utf8_lossy(&line[self.levels[d].prefix.len()..]);
        if self.open_subtest(d, &text) {
            return;
        }
        self.at_level(d, &text);
    }

    /// Looks for the first version line; its indentation is the top's.
    fn start(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let indent = text.len() - text.trim_start_matches([' ', '\t']).len();
        if is_version(text[indent..].trim_end()) {
            self.levels.push(Level::new(line[..indent].to_vec()));
        }
    }

    /// A line one level deeper than `d` that opens a subtest: pushes it
    /// and reads the line there.
    fn open_subtest(&mut self, d: usize, text: &str) -> bool {
        for ext in ["    ", "# "] {
            let Some(inner) = text.strip_prefix(ext) else {
                continue;
            };
            let opens = matches!(
                classify(inner),
                Line::Version | Line::Subtest(_) | Line::Plan(_)
            );
            if !opens || d + 1 >= MAX_DEPTH {
                continue;
            }
            self.levels.truncate(d + 1);
            let failed = self.counts.failed;
            let parent = &mut self.levels[d];
            parent.had_child = true;
            parent.failed_before_child = failed;
            let mut prefix = parent.prefix.clone();
            prefix.extend_from_slice(ext.as_bytes());
            self.levels.push(Level::new(prefix));
            self.at_level(d + 1, inner);
            return true;
        }
        false
    }

    fn at_level(&mut self, d: usize, text: &str) {
        match classify(text) {
            Line::Version | Line::Other => {}
            Line::Subtest(name) => {
                let level = &mut self.levels[d];
                if level.results == 0 && level.name.is_empty() {
                    level.name = name.chars().take(256).collect();
                }
            }
            Line::Plan(n) => {
                self.levels.truncate(d + 1);
                let level = &mut self.levels[d];
                if level.plan.is_none() {
                    level.plan = Some(n);
                }
                if d == 0 {
                    self.check_complete();
                }
            }
            Line::Diag(msg) => {
                let level = &mut self.levels[d];
                if level.diag.len() < MAX_DIAG_LINES && level.diag_bytes < MAX_DIAG_BYTES {
                    let keep: String = msg
                        .chars()
                        .take(MAX_DIAG_BYTES - level.diag_bytes)
                        .collect();
                    level.diag_bytes += keep.len();
                    level.diag.push(keep);
                }
            }
            Line::BailOut => {
                self.verdict = Some(Verdict::Failed(text.trim_end().to_string()));
            }
            Line::Result {
                ok,
                name,
                directive,
            } => {
                let word = directive.split_whitespace().next().unwrap_or("");
                let skipped =
                    word.eq_ignore_ascii_case("skip") || word.eq_ignore_ascii_case("todo");
                let outcome = match (ok, skipped) {
                    (_, true) => Outcome::Skip,
                    (true, false) => Outcome::Pass,
                    (false, false) => Outcome::Fail,
                };
                self.result(d, name, outcome, text.trim_end());
            }
        }
    }

    fn result(&mut self, d: usize, name: &str, outcome: Outcome, line: &str) {
        self.levels.truncate(d + 1);
        let level = &mut self.levels[d];
        let had_child = std::mem::take(&mut level.had_child);
        let diag = std::mem::take(&mut level.diag);
        level.diag_bytes = 0;
        level.results += 1;
        // A suite's own result counts only when it failed and none of its
        // subtests did.
        let counts_as_case = !had_child
            || outcome == Outcome::Fail && self.counts.failed == level.failed_before_child;
        if counts_as_case {
            match outcome {
                Outcome::Pass => self.counts.passed += 1,
                Outcome::Fail => self.counts.failed += 1,
                Outcome::Skip => self.counts.skipped += 1,
            }
            if self.cases.len() < MAX_CASES {
                let suite = self.levels[1..=d]
                    .iter()
                    .map(|l| l.name.as_str())
                    .filter(|n| !n.is_empty())
                    .collect::<Vec<_>>()
                    .join(".");
                self.cases.push(Case {
                    suite,
                    name: name.chars().take(256).collect(),
                    outcome,
                    line: line.to_string(),
                    diag,
                });
            } else {
                self.cases_dropped += 1;
            }
        }
        if d == 0 {
            self.last_top = Some(line.to_string());
            if outcome == Outcome::Fail && self.first_failure.is_none() {
                self.first_failure = Some(line.to_string());
                if !self.keep_going {
                    self.verdict = Some(Verdict::Failed(line.to_string()));
                    return;
                }
            }
            self.check_complete();
        }
    }

    fn check_complete(&mut self) {
        let top = &self.levels[0];
        if top.plan.is_some_and(|n| top.results >= n) {
            self.verdict = Some(match &self.first_failure {
                Some(line) => Verdict::Failed(line.clone()),
                None => Verdict::Passed,
            });
        }
    }

    /// The report as JUnit XML: one testcase per leaf test (a failure's
    /// diagnostic lines are its message body). `incomplete` (how the run
    /// ended before the report did) adds one erroring testcase saying so.
    pub fn junit(&self, incomplete: Option<&str>) -> String {
        let c = self.counts;
        let errors = u64::from(incomplete.is_some());
        let tests = c.passed + c.failed + c.skipped + errors;
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            x,
            "<testsuites name=\"kvmini ktap\" tests=\"{tests}\" failures=\"{}\" errors=\"{errors}\" skipped=\"{}\">",
            c.failed, c.skipped
        );
        let _ = writeln!(
            x,
            "  <testsuite name=\"ktap\" tests=\"{tests}\" failures=\"{}\" errors=\"{errors}\" skipped=\"{}\">",
            c.failed, c.skipped
        );
        for case in &self.cases {
            let class = if case.suite.is_empty() {
                "ktap"
            } else {
                &case.suite
            };
            let _ = write!(
                x,
                "    <testcase classname=\"{}\" name=\"{}\"",
                escape(class),
                escape(&case.name)
            );
            match case.outcome {
                Outcome::Pass => x.push_str("/>\n"),
                Outcome::Skip => {
                    let _ = writeln!(
                        x,
                        "><skipped message=\"{}\"/></testcase>",
                        escape(&case.line)
                    );
                }
                Outcome::Fail => {
                    let _ = writeln!(
                        x,
                        "><failure message=\"{}\">{}</failure></testcase>",
                        escape(&case.line),
                        escape(&case.diag.join("\n"))
                    );
                }
            }
        }
        if self.cases_dropped > 0 {
            let _ = writeln!(
                x,
                "    <!-- {} more test cases were counted but not listed (limit {MAX_CASES}) -->",
                self.cases_dropped
            );
        }
        if let Some(why) = incomplete {
            let _ = writeln!(
                x,
                "    <testcase classname=\"ktap\" name=\"report incomplete\"><error message=\"{}\"/></testcase>",
                escape(why)
            );
        }
        x.push_str("  </testsuite>\n</testsuites>\n");
        x
    }
}

/// Text made safe for an XML attribute or element: markup characters
/// escaped, characters XML 1.0 cannot carry replaced by U+FFFD.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(ch),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str, keep_going: bool) -> (Option<Verdict>, Ktap) {
        let mut k = Ktap::new(keep_going);
        let v = k.feed(text.as_bytes());
        (v, k)
    }

    const KUNIT: &str = "\
[    0.100000] random: crng init done
[    0.200000] KTAP version 1
[    0.200001] 1..2
[    0.200002]     KTAP version 1
[    0.200003]     # Subtest: example
[    0.200004]     1..3
[    0.200005]     ok 1 example_simple_test
[    0.200006] virtio_blk virtio0: 1 queue
[    0.200007]     ok 2 example_skip_test # SKIP this test should be skipped
[    0.200008]     # example_fail: EXPECTATION FAILED at lib/kunit/example.c:42
[    0.200009]     # example_fail: Expected 1 == 2
[    0.200010]     not ok 3 example_fail
[    0.200011] # example: pass:1 fail:1 skip:1 total:3
[    0.200012] not ok 1 example
[    0.200013]     KTAP version 1
[    0.200014]     # Subtest: other
[    0.200015]     1..1
[    0.200016]     ok 1 other_test
[    0.200017] ok 2 other
";

    #[test]
    fn kunit_report_with_timestamps_and_interleaved_kernel_lines() {
        let (v, k) = run(KUNIT, true);
        assert_eq!(v, Some(Verdict::Failed("not ok 1 example".into())));
        assert_eq!(
            k.counts(),
            Counts {
                passed: 2,
                failed: 1,
                skipped: 1
            }
        );
        let fail = k
            .cases()
            .iter()
            .find(|c| c.outcome == Outcome::Fail)
            .unwrap();
        assert_eq!(fail.suite, "example");
        assert_eq!(fail.name, "example_fail");
        assert_eq!(fail.diag.len(), 2);
        assert!(fail.diag[1].contains("Expected 1 == 2"));
        assert_eq!(k.cases()[3].suite, "other");
    }

    #[test]
    fn first_top_level_failure_decides_unless_keep_going() {
        let mut k = Ktap::new(false);
        let cut = KUNIT.find("[    0.200013]").unwrap();
        assert_eq!(k.feed(&KUNIT.as_bytes()[..cut - 20]), None);
        assert_eq!(
            k.feed(&KUNIT.as_bytes()[cut - 20..]),
            Some(Verdict::Failed("not ok 1 example".into()))
        );
        // Nothing after the verdict counts.
        assert_eq!(k.counts().passed, 1);
        assert_eq!(k.feed(b"ok 2 other\n"), None);
    }

    #[test]
    fn all_pass_decides_when_the_plan_completes() {
        let mut k = Ktap::new(false);
        assert_eq!(k.feed(b"boot log\nKTAP version 1\n1..2\nok 1 a\n"), None);
        assert!(k.summary().contains("1 of 2 top-level results"));
        assert_eq!(k.feed(b"ok 2 b # SKIP no"), None, "no newline yet");
        assert_eq!(k.feed(b"\n"), Some(Verdict::Passed));
        assert_eq!(k.summary(), "ktap: 1 passed, 0 failed, 1 skipped");
    }

    #[test]
    fn skip_is_not_a_failure_and_plan_may_come_last() {
        let (v, k) = run(
            "TAP version 13\nnot ok 1 x # SKIP\nok 2 y # TODO later\n1..2\n",
            false,
        );
        assert_eq!(v, Some(Verdict::Passed));
        assert_eq!(k.counts().skipped, 2);
        let (v, _) = run("KTAP version 1\n1..0 # SKIP nothing here\n", false);
        assert_eq!(v, Some(Verdict::Passed));
    }

    #[test]
    fn kselftest_nesting_with_hash_prefix() {
        let text = "\
TAP version 13
1..2
# selftests: timers: posix_timers
# TAP version 13
# 1..2
# ok 1 Check itimer virtual
# # something went wrong here
# not ok 2 Check itimer prof
not ok 1 selftests: timers: posix_timers # exit=1
# selftests: timers: nanosleep
# plain output, not TAP
ok 2 selftests: timers: nanosleep
";
        let (v, k) = run(text, true);
        assert_eq!(
            v,
            Some(Verdict::Failed(
                "not ok 1 selftests: timers: posix_timers # exit=1".into()
            ))
        );
        assert_eq!(
            k.counts(),
            Counts {
                passed: 2,
                failed: 1,
                skipped: 0
            }
        );
        let fail = &k.cases()[1];
        assert_eq!(fail.name, "Check itimer prof");
        assert_eq!(fail.diag, ["something went wrong here"]);
    }

    #[test]
    fn nested_failure_in_a_passing_suite_is_counted_but_top_decides() {
        let text =
            "KTAP version 1\n1..1\n    KTAP version 1\n    1..1\n    not ok 1 inner\nok 1 outer\n";
        let (v, k) = run(text, false);
        assert_eq!(v, Some(Verdict::Passed), "the top level says ok");
        assert_eq!(k.counts().failed, 1);
        // A suite that fails with every subtest passing counts itself.
        let text =
            "KTAP version 1\n1..1\n    KTAP version 1\n    1..1\n    ok 1 inner\nnot ok 1 outer\n";
        let (v, k) = run(text, false);
        assert_eq!(v, Some(Verdict::Failed("not ok 1 outer".into())));
        assert_eq!(
            k.counts(),
            Counts {
                passed: 1,
                failed: 1,
                skipped: 0
            }
        );
    }

    #[test]
    fn truncated_report_says_how_far_it_got() {
        let (v, k) = run("KTAP version 1\n1..3\nok 1 a\nok 2 b\n", false);
        assert_eq!(v, None);
        assert_eq!(
            k.summary(),
            "ktap: 2 passed, 0 failed, 0 skipped (report incomplete: 2 of 3 top-level results, the last \"ok 2 b\")"
        );
        let (_, k) = run("no report at all\n", false);
        assert!(!k.started());
        assert!(k.summary().ends_with("(no KTAP report seen on COM1)"));
    }

    #[test]
    fn bail_out_fails() {
        let (v, _) = run("TAP version 13\n1..5\nok 1 a\nBail out! disk gone\n", true);
        assert_eq!(v, Some(Verdict::Failed("Bail out! disk gone".into())));
    }

    #[test]
    fn split_anywhere_gives_the_same_verdict() {
        for cut in 0..KUNIT.len() {
            let mut k = Ktap::new(true);
            let v = k
                .feed(&KUNIT.as_bytes()[..cut])
                .or(k.feed(&KUNIT.as_bytes()[cut..]));
            assert_eq!(
                v,
                Some(Verdict::Failed("not ok 1 example".into())),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn hostile_input_stays_bounded() {
        let mut k = Ktap::new(true);
        k.feed(b"KTAP version 1\n");
        // Very deep nesting, long lines, many cases, endless diagnostics.
        let mut deep = String::new();
        for i in 0..100 {
            deep.push_str(&"    ".repeat(i));
            deep.push_str("KTAP version 1\n");
        }
        k.feed(deep.as_bytes());
        assert!(k.levels.len() <= MAX_DEPTH);
        k.feed(&vec![b'#'; 100_000]);
        k.feed(b"\n");
        for _ in 0..1000 {
            k.feed(&[b'#', b' ', b'x'].repeat(100));
            k.feed(b"\n");
        }
        assert!(k
            .levels
            .iter()
            .all(|l| l.diag.len() <= MAX_DIAG_LINES && l.diag_bytes <= MAX_DIAG_BYTES));
        for i in 0..(MAX_CASES + 50) {
            k.feed(format!("ok {i} t\n").as_bytes());
        }
        // The first of them ends the deep subtests (a suite result, not a
        // case): 49 are beyond the limit.
        assert_eq!(k.cases().len(), MAX_CASES);
        assert!(k.junit(None).contains("<!-- 49 more test cases"));
        k.feed(b"ok \xff\xfe 1\nnot ok 99999999999999999999999 x\n");
    }

    #[test]
    fn junit_lists_cases_and_escapes() {
        let text =
            "KTAP version 1\n1..3\nok 1 a<b\n# got \"x\" & \x01\nnot ok 2 c\nok 3 d # SKIP why\n";
        let (_, k) = run(text, true);
        let x = k.junit(None);
        assert!(x.contains("<testcase classname=\"ktap\" name=\"a&lt;b\"/>"));
        assert!(x.contains(
            "<failure message=\"not ok 2 c\">got &quot;x&quot; &amp; \u{fffd}</failure>"
        ));
        assert!(x.contains("<skipped message=\"ok 3 d # SKIP why\"/>"));
        assert!(x.contains("tests=\"3\" failures=\"1\" errors=\"0\" skipped=\"1\""));
        let x = k.junit(Some("timed out"));
        assert!(x.contains("name=\"report incomplete\"><error message=\"timed out\"/>"));
        assert!(x.contains("tests=\"4\" failures=\"1\" errors=\"1\""));
    }

    #[test]
    fn printk_prefixes_are_stripped() {
        assert_eq!(strip_printk(b"[    1.234567] KTAP"), b"KTAP");
        assert_eq!(strip_printk(b"[    1.234567][    T1] ok 1"), b"ok 1");
        assert_eq!(strip_printk(b"[x] ok"), b"[x] ok");
        assert_eq!(strip_printk(b"    ok"), b"    ok");
    }
}
