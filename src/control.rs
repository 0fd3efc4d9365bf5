//! How a VM ends: the first reason reported wins, and every thread that
//! waits on the VM (the vCPUs, the console loop) learns about it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest wrote this byte to the debug-exit port.
    GuestExit(u8),
    /// The guest wrote this byte to the debug-exit port, under
    /// `--debug-exit-status qemu`: the status is `(byte << 1) | 1`.
    GuestExitQemu(u8),
    /// The guest asked for a reset (i8042, ACPI reset register, or a
    /// triple fault of a kernel booted with reboot=t).
    Reset,
    /// The guest powered off through ACPI.
    PowerOff,
    /// The guest kernel panicked.
    Panic,
    /// The guest crashed: triple fault, internal error, failed entry.
    Crash(String),
    /// `--timeout` expired.
    Timeout,
    /// The host sent kvmini this signal.
    Signal(i32),
    /// The user typed Ctrl-A x on the console.
    ConsoleQuit,
    /// An `--until` pattern matched the console output.
    Until(String),
    /// A `--fail-on` pattern matched the console output.
    FailOn(String),
    /// `--ktap`: the top-level plan completed with no failure.
    KtapPassed,
    /// `--ktap`: a top-level test failed (its result line), or the report
    /// ended before its plan completed (how far it got).
    KtapFailed(String),
    /// gdb's `kill` (through `--gdb`).
    GdbKill,
    /// kvmini itself failed while the VM ran.
    HostError(String),
}

/// The shared "the VM is ending" state.
pub struct VmControl {
    stopping: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    evt: EventFd,
}

impl VmControl {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            stopping: AtomicBool::new(false),
            reason: Mutex::new(None),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` unless another one came first, and wakes waiters.
    pub fn stop(&self, reason: StopReason) {
        let mut slot = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            log::debug!("VM stopping: {reason:?}");
            *slot = Some(reason);
        }
        self.stopping.store(true, Ordering::Release);
        // The eventfd only wakes pollers; if it fails the flag still stops
        // the vCPUs, so there is nothing more to do.
        let _ = self.evt.write(1);
    }

    /// True once any thread has asked the VM to stop.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// The reason the VM stopped, if it has.
    pub fn reason(&self) -> Option<StopReason> {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes a stopped VM runnable again, for a reboot in place: the
    /// reason is cleared and the eventfd drained. Only while no vCPU runs
    /// (every one parked after the stop), so no stop is lost.
    pub fn restart(&self) {
        *self.reason.lock().unwrap_or_else(PoisonError::into_inner) = None;
        // EAGAIN if the counter was already zero: nothing to drain.
        let _ = self.evt.read();
        self.stopping.store(false, Ordering::Release);
    }

    /// Readable once the VM is stopping.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_clears_the_stop() {
        let c = VmControl::new().unwrap();
        c.stop(StopReason::Reset);
        c.restart();
        assert!(!c.is_stopping());
        assert_eq!(c.reason(), None);
        assert!(c.eventfd().read().is_err(), "the eventfd is drained");
        c.stop(StopReason::PowerOff);
        assert_eq!(c.reason(), Some(StopReason::PowerOff));
    }

    #[test]
    fn first_reason_wins() {
        let c = VmControl::new().unwrap();
        assert!(!c.is_stopping());
        assert_eq!(c.reason(), None);
        c.stop(StopReason::GuestExit(3));
        c.stop(StopReason::Timeout);
        assert!(c.is_stopping());
        assert_eq!(c.reason(), Some(StopReason::GuestExit(3)));
        assert_eq!(c.eventfd().read().unwrap(), 2);
    }
}
