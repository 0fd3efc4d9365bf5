//! `--boot-trace`: a timeline of one run, printed on stderr at the end.
//! Points: process start, KVM opened, VM ready (memory, kernel, devices and
//! vCPUs set up), first guest exit, first serial byte, each POST code the
//! guest writes to port 0x80, VM stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// POST codes recorded at most (Linux writes port 0x80 as an I/O delay,
/// so the guest could otherwise grow the list without bound).
const MAX_POST_CODES: usize = 64;

pub struct BootTrace {
    start: Instant,
    events: Mutex<Vec<(Duration, String)>>,
    first_exit: AtomicBool,
    first_byte: AtomicBool,
    post_codes: Mutex<usize>,
}

impl BootTrace {
    pub fn new(start: Instant) -> Self {
        let t = Self {
            start,
            events: Mutex::new(Vec::new()),
            first_exit: AtomicBool::new(false),
            first_byte: AtomicBool::new(false),
            post_codes: Mutex::new(0),
        };
        t.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((Duration::ZERO, "process start".into()));
        t
    }

    pub fn mark(&self, what: impl Into<String>) {
        let at = self.start.elapsed();
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((at, what.into()));
    }

    /// Called on every exit; records the first one.
    pub fn guest_exit(&self) {
        if !self.first_exit.swap(true, Ordering::Relaxed) {
            self.mark("first guest exit");
        }
    }

    /// Called for serial output; records the first byte.
    pub fn serial_byte(&self) {
        if !self.first_byte.swap(true, Ordering::Relaxed) {
            self.mark("first serial byte");
        }
    }

    pub fn post_code(&self, code: u8) {
        let mut n = self
            .post_codes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *n < MAX_POST_CODES {
            *n += 1;
            drop(n);
            self.mark(format!("POST code {code:#04x}"));
        }
    }

    /// Starts a new boot of the same run (`--on-reboot restart`).
    pub fn rebooted(&self) {
        self.first_exit.store(false, Ordering::Relaxed);
        self.first_byte.store(false, Ordering::Relaxed);
        self.mark("guest rebooted");
    }

    /// The timeline, one event per line, in milliseconds since start.
    pub fn render(&self) -> String {
        let mut events = self
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        events.sort_by_key(|e| e.0);
        let mut s = String::from("kvmini boot trace (ms since kvmini started):\n");
        for (at, what) in events {
            s.push_str(&format!("{:10.3}  {what}\n", at.as_secs_f64() * 1e3));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firsts_are_recorded_once_and_post_codes_are_bounded() {
        let t = BootTrace::new(Instant::now());
        t.guest_exit();
        t.guest_exit();
        t.serial_byte();
        for i in 0..200u32 {
            t.post_code(i as u8);
        }
        let r = t.render();
        assert_eq!(r.matches("first guest exit").count(), 1);
        assert_eq!(r.matches("first serial byte").count(), 1);
        assert_eq!(r.matches("POST code").count(), MAX_POST_CODES);
        assert!(r.lines().nth(1).unwrap().ends_with("process start"));
    }
}
