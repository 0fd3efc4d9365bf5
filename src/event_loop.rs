//! The main thread's loop while a guest runs: one poll(2) over the
//! descriptors of every [`Subscriber`], until the VM is stopping.
//!
//! A subscriber names the descriptors it waits on for the next round
//! ([`Subscriber::interest`]: interests change as buffers fill and drain),
//! may ask to be woken at a time ([`Subscriber::wake_at`]), and handles the
//! events on its own descriptors. The console, the signals, the timeout
//! and the VM's stop eventfd are subscribers; a gdb socket or a device's
//! host descriptor is one more.
//!
//! Guarantees: the loop never blocks anywhere but in poll(2); it returns
//! once [`VmControl::is_stopping`] is true, checked before every wait (a
//! stop from any thread writes the stop eventfd, which wakes the wait).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use crate::control::{StopReason, VmControl};

/// The descriptors of one round, with who asked for each.
#[derive(Default)]
pub struct Interest {
    fds: Vec<libc::pollfd>,
    /// (subscriber index, the subscriber's own token), per entry of `fds`.
    owners: Vec<(usize, u32)>,
    current: usize,
}

impl Interest {
    /// Waits for `events` (POLLIN, POLLOUT) on `fd`; `token` comes back
    /// to the subscriber with the events.
    pub fn add(&mut self, fd: RawFd, events: libc::c_short, token: u32) {
        self.fds.push(libc::pollfd {
            fd,
            events,
            revents: 0,
        });
        self.owners.push((self.current, token));
    }
}

/// Something the main thread waits on.
pub trait Subscriber {
    /// Called before each wait (for example to hand queued input over).
    fn prepare(&mut self, _control: &VmControl) {}
    /// Adds the descriptors to wait on in this round.
    fn interest(&self, set: &mut Interest);
    /// When this subscriber wants the wait to end at the latest.
    fn wake_at(&self) -> Option<Instant> {
        None
    }
    /// Called after each wait, whatever woke it, before any event is
    /// handled (timers, batched collection).
    fn after_wait(&mut self, _control: &VmControl) {}
    /// Handles `revents` on the descriptor added with `token`.
    fn ready(&mut self, token: u32, revents: libc::c_short, control: &VmControl);
}

/// Runs until `control` says the VM is stopping.
pub fn run(subscribers: &mut [&mut dyn Subscriber], control: &VmControl) {
    run_until(subscribers, control, &|| false);
}

/// Runs until `control` says the VM is stopping or `done` says so (checked
/// after each round of events).
pub fn run_until(
    subscribers: &mut [&mut dyn Subscriber],
    control: &VmControl,
    done: &dyn Fn() -> bool,
) {
    let mut set = Interest::default();
    while !control.is_stopping() && !done() {
        set.fds.clear();
        set.owners.clear();
        let mut wake: Option<Instant> = None;
        for (i, s) in subscribers.iter_mut().enumerate() {
            s.prepare(control);
            set.current = i;
            s.interest(&mut set);
            wake = match (wake, s.wake_at()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        if control.is_stopping() || done() {
            break;
        }
        let timeout_ms = match wake {
            None => -1,
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                // Round up: waking early would only spin.
                left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
            }
        };
        // SAFETY: set.fds is a valid array of pollfd for the call.
        let n = unsafe {
            libc::poll(
                set.fds.as_mut_ptr(),
                set.fds.len() as libc::nfds_t,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                control.stop(StopReason::HostError(format!("poll failed: {e}")));
            }
            continue;
        }
        for s in subscribers.iter_mut() {
            s.after_wait(control);
        }
        for (fd, &(owner, token)) in set.fds.iter().zip(&set.owners) {
            if fd.revents != 0 {
                subscribers[owner].ready(token, fd.revents, control);
            }
        }
    }
}

/// The VM's stop eventfd: only wakes the wait (the loop itself checks
/// whether the VM is stopping).
pub struct Stop<'a>(pub &'a VmControl);

impl Subscriber for Stop<'_> {
    fn interest(&self, set: &mut Interest) {
        set.add(self.0.eventfd().as_raw_fd(), libc::POLLIN, 0);
    }

    fn ready(&mut self, _: u32, _: libc::c_short, _: &VmControl) {}
}

/// `--timeout`: stops the VM once the deadline has passed.
pub struct Timeout(pub Option<Instant>);

impl Subscriber for Timeout {
    fn interest(&self, _: &mut Interest) {}

    fn wake_at(&self) -> Option<Instant> {
        self.0
    }

    fn prepare(&mut self, control: &VmControl) {
        if self.0.is_some_and(|d| Instant::now() >= d) {
            control.stop(StopReason::Timeout);
        }
    }

    fn ready(&mut self, _: u32, _: libc::c_short, _: &VmControl) {}
}

/// The signalfd of the signals that stop the VM (see
/// [`crate::console::signal_fd`]).
pub struct Signals(pub OwnedFd);

impl Subscriber for Signals {
    fn interest(&self, set: &mut Interest) {
        set.add(self.0.as_raw_fd(), libc::POLLIN, 0);
    }

    fn ready(&mut self, _: u32, _: libc::c_short, control: &VmControl) {
        if let Some(sig) = read_signal(&self.0) {
            control.stop(StopReason::Signal(sig));
        }
    }
}

fn read_signal(fd: &OwnedFd) -> Option<i32> {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    let ptr = (&mut info as *mut libc::signalfd_siginfo).cast();
    // SAFETY: reads at most `size` bytes into `info`.
    let n = unsafe { libc::read(fd.as_raw_fd(), ptr, size) };
    (n as usize == size).then_some(info.ssi_signo as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    /// Counts its events; stops the VM after `stop_after` of them.
    struct Counter {
        evt: EventFd,
        seen: u32,
        stop_after: u32,
    }

    impl Subscriber for Counter {
        fn interest(&self, set: &mut Interest) {
            set.add(self.evt.as_raw_fd(), libc::POLLIN, 7);
        }

        fn ready(&mut self, token: u32, revents: libc::c_short, control: &VmControl) {
            assert_eq!((token, revents & libc::POLLIN), (7, libc::POLLIN));
            let _ = self.evt.read();
            self.seen += 1;
            if self.seen == self.stop_after {
                control.stop(StopReason::PowerOff);
            } else {
                self.evt.write(1).unwrap();
            }
        }
    }

    #[test]
    fn events_reach_their_subscriber_until_the_vm_stops() {
        let control = VmControl::new().unwrap();
        let mut c = Counter {
            evt: EventFd::new(EFD_NONBLOCK).unwrap(),
            seen: 0,
            stop_after: 3,
        };
        c.evt.write(1).unwrap();
        let mut stop = Stop(&control);
        run(&mut [&mut stop, &mut c], &control);
        assert_eq!(c.seen, 3);
        assert_eq!(control.reason(), Some(StopReason::PowerOff));
    }

    #[test]
    fn the_deadline_stops_the_vm() {
        let control = VmControl::new().unwrap();
        let start = Instant::now();
        let mut t = Timeout(Some(start + Duration::from_millis(30)));
        let mut stop = Stop(&control);
        run(&mut [&mut stop, &mut t], &control);
        assert_eq!(control.reason(), Some(StopReason::Timeout));
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn a_stop_from_another_thread_ends_the_wait() {
        let control = std::sync::Arc::new(VmControl::new().unwrap());
        let other = control.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            other.stop(StopReason::Reset);
        });
        let mut stop = Stop(&control);
        run(&mut [&mut stop], &control);
        t.join().unwrap();
        assert_eq!(control.reason(), Some(StopReason::Reset));
    }
}
