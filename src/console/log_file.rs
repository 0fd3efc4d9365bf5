//! `--serial-log`: a copy of COM1's output in a file, optionally with the
//! time since kvmini started at the start of every line.
//!
//! The file is written without blocking (src/host_file.rs): what a slow
//! reader (a FIFO's) has not taken waits here, the console polls for room,
//! and beyond [`LOG_LIMIT`] the port stops taking the guest's output, so
//! the guest waits and nothing is lost while kvmini's thread stays free.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Log bytes held for a reader that is not keeping up before COM1's
/// output waits for it.
pub const LOG_LIMIT: usize = 256 * 1024;

pub struct SerialLog {
    file: File,
    path: PathBuf,
    start: Option<Instant>,
    at_line_start: bool,
    /// Formatted but not yet written.
    pending: Vec<u8>,
    /// The first write error, after which the log stops.
    failed: Option<io::Error>,
    /// Bytes the log could not take after it failed.
    lost: usize,
}

impl SerialLog {
    /// Creates the log; with `start`, lines get "[   1.234567] " prefixes.
    pub fn create(path: &Path, start: Option<Instant>) -> io::Result<Self> {
        Ok(Self {
            file: crate::host_file::open_output(path)?,
            path: path.to_path_buf(),
            start,
            at_line_start: true,
            pending: Vec::new(),
            failed: None,
            lost: 0,
        })
    }

    /// The log file, to compare with the other outputs.
    pub fn file(&self) -> &File {
        &self.file
    }

    fn stamp(&mut self) {
        if let Some(start) = self.start {
            let t = start.elapsed();
            let _ = write!(
                self.pending,
                "[{:4}.{:06}] ",
                t.as_secs(),
                t.subsec_micros()
            );
        }
    }

    /// Appends output and writes what the file takes now.
    pub fn write(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            self.lost += bytes.len();
            return;
        }
        if self.start.is_none() {
            self.pending.extend_from_slice(bytes);
        } else {
            for line in bytes.split_inclusive(|&b| b == b'\n') {
                if self.at_line_start {
                    self.stamp();
                }
                self.pending.extend_from_slice(line);
                self.at_line_start = line.ends_with(b"\n");
            }
        }
        self.flush();
    }

    /// Writes what the file takes without blocking; a failure is reported
    /// once and the log stops.
    pub fn flush(&mut self) {
        while !self.pending.is_empty() && self.failed.is_none() {
            match (&self.file).write(&self.pending) {
                Ok(0) => self.fail(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => self.fail(e),
            }
        }
    }

    fn fail(&mut self, e: io::Error) {
        log::warn!("--serial-log {}: {e}; logging stops", self.path.display());
        self.lost += self.pending.len();
        self.pending.clear();
        self.failed = Some(e);
    }

    /// The descriptor to wait on for room, while bytes wait for it.
    pub fn blocked_fd(&self) -> Option<RawFd> {
        (!self.pending.is_empty()).then(|| self.file.as_raw_fd())
    }

    /// False while [`LOG_LIMIT`] bytes wait for a slow reader.
    pub fn accepts_output(&self) -> bool {
        self.pending.len() < LOG_LIMIT
    }

    /// What the log did not get: bytes dropped after a failure, and bytes
    /// still waiting (the caller gave up on them); with the failure.
    pub fn lost(&self) -> (usize, Option<&io::Error>) {
        (self.lost + self.pending.len(), self.failed.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_prefix_every_line_however_split() {
        let p = std::env::temp_dir().join(format!("kvmini-log-{}", std::process::id()));
        let mut l = SerialLog::create(&p, Some(Instant::now())).unwrap();
        l.write(b"one\ntw");
        l.write(b"o\n\nthree");
        l.flush();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines.len(), 4);
        for (line, want) in lines.iter().zip(["one", "two", "", "three"]) {
            assert!(line.starts_with('['), "{line:?}");
            assert_eq!(&line[line.find("] ").unwrap() + 2..], want);
        }
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn without_timestamps_bytes_are_copied() {
        let p = std::env::temp_dir().join(format!("kvmini-log2-{}", std::process::id()));
        let mut l = SerialLog::create(&p, None).unwrap();
        l.write(b"a\nb");
        l.write(b"c");
        assert_eq!(std::fs::read(&p).unwrap(), b"a\nbc");
        std::fs::remove_file(p).unwrap();
    }
}
