//! `--serial-log`: a copy of COM1's output in a file, optionally with the
//! time since kvmini started at the start of every line.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct SerialLog {
    out: BufWriter<File>,
    path: PathBuf,
    start: Option<Instant>,
    at_line_start: bool,
    failed: bool,
}

impl SerialLog {
    /// Creates the log; with `start`, lines get "[   1.234567] " prefixes.
    pub fn create(path: &Path, start: Option<Instant>) -> std::io::Result<Self> {
        Ok(Self {
            out: BufWriter::new(File::create(path)?),
            path: path.to_path_buf(),
            start,
            at_line_start: true,
            failed: false,
        })
    }

    fn stamp(&mut self) -> std::io::Result<()> {
        if let Some(start) = self.start {
            let t = start.elapsed();
            write!(self.out, "[{:4}.{:06}] ", t.as_secs(), t.subsec_micros())?;
        }
        Ok(())
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.start.is_none() {
            self.out.write_all(bytes)?;
            return self.out.flush();
        }
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            if self.at_line_start {
                self.stamp()?;
            }
            self.out.write_all(line)?;
            self.at_line_start = line.ends_with(b"\n");
        }
        self.out.flush()
    }

    /// Appends output; a failure is reported once and the log stops.
    pub fn write(&mut self, bytes: &[u8]) {
        if self.failed {
            return;
        }
        if let Err(e) = self.write_all(bytes) {
            log::warn!("--serial-log {}: {e}; logging stops", self.path.display());
            self.failed = true;
        }
    }

    pub fn flush(&mut self) {
        let _ = self.out.flush();
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
