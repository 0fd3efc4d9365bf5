//! The guest's serial output on its way to the host: the chosen back end,
//! plus a watch for the Linux panic banner.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::config::SerialBackend;

/// Errors opening an output back end.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--serial file={0}: cannot open the file for writing")]
    Open(std::path::PathBuf, #[source] io::Error),
    #[error("--serial stdio: cannot use standard output")]
    Stdout(#[source] io::Error),
}

/// Watches a byte stream for a fixed pattern, one byte at a time, with a
/// constant amount of work per byte (KMP automaton over the needle).
pub struct Watch {
    needle: &'static [u8],
    fail: Vec<usize>,
    matched: usize,
}

impl Watch {
    pub fn new(needle: &'static [u8]) -> Self {
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

    /// Feeds one byte; true when the needle has just been completed.
    pub fn feed(&mut self, b: u8) -> bool {
        while self.matched > 0 && self.needle[self.matched] != b {
            self.matched = self.fail[self.matched - 1];
        }
        if self.needle[self.matched] == b {
            self.matched += 1;
        }
        if self.matched == self.needle.len() {
            self.matched = self.fail[self.matched - 1];
            return true;
        }
        false
    }
}

/// What Linux prints first when it panics.
pub const PANIC_BANNER: &[u8] = b"Kernel panic - not syncing";

/// A serial port's output stream.
pub struct SerialOutput {
    sink: Option<File>,
    panic_watch: Watch,
    panicked: Arc<AtomicBool>,
}

impl SerialOutput {
    /// Opens `backend`. `panicked` is set once the panic banner goes by.
    pub fn open(backend: &SerialBackend, panicked: Arc<AtomicBool>) -> Result<Self, Error> {
        let sink = match backend {
            SerialBackend::Stdio => Some(File::from(
                io::stdout()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(Error::Stdout)?,
            )),
            SerialBackend::File(p) => Some(File::create(p).map_err(|e| Error::Open(p.clone(), e))?),
            SerialBackend::Null => None,
        };
        Ok(Self {
            sink,
            panic_watch: Watch::new(PANIC_BANNER),
            panicked,
        })
    }
}

impl Write for SerialOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            if self.panic_watch.feed(b) {
                self.panicked.store(true, Ordering::Release);
            }
        }
        match &mut self.sink {
            Some(f) => f.write_all(buf).map(|_| buf.len()),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_finds_needle_across_writes_and_overlaps() {
        let mut w = Watch::new(b"aab");
        let hits: Vec<bool> = b"aaab-aab".iter().map(|&b| w.feed(b)).collect();
        assert_eq!(hits.iter().filter(|&&h| h).count(), 2);
        assert!(hits[3] && hits[7]);
        let mut w = Watch::new(PANIC_BANNER);
        let text = b"[ 1.0] Kernel panic - not syncing: Attempted to kill init!";
        assert!(text.iter().any(|&b| w.feed(b)));
        let mut w = Watch::new(PANIC_BANNER);
        assert!(!b"Kernel panic - not syncin".iter().any(|&b| w.feed(b)));
    }

    #[test]
    fn file_backend_receives_output_and_panic_is_flagged() {
        let dir = std::env::temp_dir().join(format!("kvmini-out-{}", std::process::id()));
        let flag = Arc::new(AtomicBool::new(false));
        let mut out = SerialOutput::open(&SerialBackend::File(dir.clone()), flag.clone()).unwrap();
        out.write_all(b"hello Kernel panic - not syncing\n")
            .unwrap();
        assert!(flag.load(Ordering::Acquire));
        assert_eq!(
            std::fs::read(&dir).unwrap(),
            b"hello Kernel panic - not syncing\n"
        );
        std::fs::remove_file(dir).unwrap();
    }

    #[test]
    fn missing_directory_is_an_error_naming_the_flag() {
        let flag = Arc::new(AtomicBool::new(false));
        let e = SerialOutput::open(&SerialBackend::File("/nonexistent-dir/x".into()), flag)
            .err()
            .unwrap();
        assert!(e
            .to_string()
            .starts_with("--serial file=/nonexistent-dir/x"));
    }
}
