//! Fuzzes `--exec`'s COM2 demultiplexer (kvmini::exec::Demux), which reads
//! bytes a guest writes: arbitrary framed input, cut into arbitrary
//! pieces, consumed by a writer that takes arbitrary amounts at a time.
//!
//! Invariants checked:
//! 1. It never panics, and every call makes progress or says it is done.
//! 2. Splitting changes nothing: any cutting and any writer give the same
//!    stdout and stderr as one pass over the whole input.
//! 3. Nothing is invented: the two outputs together are never longer than
//!    the input, and each DLE in them came from a DLE DLE pair.

#![no_main]

use libfuzzer_sys::fuzz_target;

use kvmini::exec::{Demux, Step, Stream, DLE};

fn run(input: &[u8], cuts: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut d = Demux::default();
    let mut cut = cuts.iter().cycle();
    let mut at = 0;
    while at < input.len() {
        let piece_len = cut.next().map_or(input.len(), |&c| usize::from(c) + 1);
        let piece = &input[at..(at + piece_len).min(input.len())];
        let mut p = 0;
        while let Some(step) = d.next(&piece[p..]) {
            let n = match step {
                Step::Control(n) => n,
                Step::Data(s, len) => {
                    assert!(len > 0 && p + len <= piece.len());
                    let take = cut.next().map_or(len, |&c| usize::from(c % 7) + 1).min(len);
                    let target = if s == Stream::Stdout {
                        &mut out
                    } else {
                        &mut err
                    };
                    target.extend_from_slice(&piece[p..p + take]);
                    take
                }
            };
            assert!(n > 0, "no progress");
            d.consumed(&piece[p..], n);
            p += n;
        }
        at += piece.len();
    }
    (out, err)
}

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let (cuts, input) = data.split_at(split);
    let whole = run(input, &[]);
    let pieces = run(input, cuts);
    assert_eq!(whole, pieces, "splitting changed the streams");
    assert!(whole.0.len() + whole.1.len() <= input.len());
    let dles_out = whole
        .0
        .iter()
        .chain(&whole.1)
        .filter(|&&b| b == DLE)
        .count();
    let pairs = input.windows(2).filter(|w| w == &[DLE, DLE]).count();
    assert!(dles_out <= pairs, "a DLE that was not escaped came out");
});
