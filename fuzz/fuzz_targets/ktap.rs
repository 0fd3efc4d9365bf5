//! Fuzzes the `--ktap` reader with hostile console output.
//!
//! The first byte chooses keep-going and a chunk size; the rest is COM1's
//! output. Invariants checked:
//! 1. no panic, whatever the bytes;
//! 2. the verdict does not depend on how the stream is split: fed whole
//!    and fed in chunks, the reader returns the same verdict (or none), at
//!    most once, and the same counts;
//! 3. bounded memory: at most MAX_CASES stored cases, each diagnostic list
//!    within MAX_DIAG_LINES;
//! 4. the JUnit text has no raw '<' inside attribute values or bodies that
//!    kvmini did not write itself: every '<' starts one of its own tags or
//!    the XML declaration or a comment.

#![no_main]

use kvmini::ktap::{Ktap, MAX_CASES, MAX_DIAG_LINES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let keep_going = ctl & 1 == 1;
    let chunk = usize::from(ctl >> 1).max(1);

    let mut whole = Ktap::new(keep_going);
    let v_whole = whole.feed(stream);

    let mut split = Ktap::new(keep_going);
    let mut v_split = None;
    for c in stream.chunks(chunk) {
        if let Some(v) = split.feed(c) {
            assert!(v_split.is_none(), "a verdict was returned twice");
            v_split = Some(v);
        }
    }
    assert_eq!(v_whole, v_split, "the verdict depends on the split");
    assert_eq!(whole.counts(), split.counts());
    assert_eq!(whole.summary(), split.summary());

    assert!(whole.cases().len() <= MAX_CASES);
    assert!(whole.cases().iter().all(|c| c.diag.len() <= MAX_DIAG_LINES));

    let xml = whole.junit(Some("fuzz <end> & \"quote\""));
    for (i, _) in xml.match_indices('<') {
        let rest = &xml[i..];
        assert!(
            [
                "<?xml ",
                "<testsuites ",
                "<testsuite ",
                "<testcase ",
                "<failure ",
                "<skipped ",
                "<error ",
                "</",
                "<!-- "
            ]
            .iter()
            .any(|t| rest.starts_with(t)),
            "an unescaped '<' in the JUnit text at {i}: {:?}",
            &rest[..rest.len().min(40)]
        );
    }
});
