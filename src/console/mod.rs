//! The console: the host terminal and standard input on one side, the
//! guest's COM1 on the other, and the main thread's wait for the VM to end.

pub mod output;
mod terminal;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use vmm_sys_util::eventfd::EventFd;

use crate::control::{StopReason, VmControl};
use crate::devices::serial::SerialDevice;
pub use terminal::{restore_terminal, RawTerminal};

/// Ctrl-A: the console escape key.
const ESCAPE: u8 = 0x01;

/// What standard input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdin {
    /// A terminal: raw mode, escape sequences.
    Tty,
    /// A pipe, file or socket: bytes are forwarded as they are.
    Stream,
    /// Closed: nothing to forward.
    Closed,
}

impl Stdin {
    pub fn detect() -> Self {
        // SAFETY: fcntl(F_GETFD) only queries the descriptor table.
        if unsafe { libc::fcntl(0, libc::F_GETFD) } < 0 {
            return Stdin::Closed;
        }
        // SAFETY: isatty only queries the descriptor.
        if unsafe { libc::isatty(0) } == 1 {
            Stdin::Tty
        } else {
            Stdin::Stream
        }
    }
}

/// Signals the console turns into a clean stop.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and threads it
/// spawns later) and returns a signalfd that reports them.
pub fn signal_fd() -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t for the calls below.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
    }
    // SAFETY: valid set pointer; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: valid set pointer; a new descriptor is returned or -1.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a freshly created descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn read_signal(fd: &OwnedFd) -> Option<i32> {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reads at most `size` bytes into `info`.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            size,
        )
    };
    (n as usize == size).then_some(info.ssi_signo as i32)
}

/// Forwards standard input into a serial device, honouring its FIFO.
struct InputFeed {
    kind: Stdin,
    pending: Vec<u8>,
    eof: bool,
    escape: bool,
}

impl InputFeed {
    /// Turns raw terminal bytes into guest bytes; Ctrl-A x quits.
    fn filter(&mut self, bytes: &[u8], control: &VmControl) {
        if self.kind != Stdin::Tty {
            self.pending.extend_from_slice(bytes);
            return;
        }
        for &b in bytes {
            if self.escape {
                self.escape = false;
                match b {
                    b'x' | b'X' => control.stop(StopReason::ConsoleQuit),
                    ESCAPE => self.pending.push(ESCAPE),
                    other => {
                        self.pending.push(ESCAPE);
                        self.pending.push(other);
                    }
                }
            } else if b == ESCAPE {
                self.escape = true;
            } else {
                self.pending.push(b);
            }
        }
    }
}

/// Waits for the VM to stop, forwarding input meanwhile. Returns when
/// `control` says the VM is stopping; stops it on a signal or the deadline.
pub fn wait(
    control: &VmControl,
    serial: &Arc<Mutex<SerialDevice>>,
    rx_ready: &EventFd,
    signals: &OwnedFd,
    stdin: Stdin,
    deadline: Option<Instant>,
) {
    let mut feed = (stdin != Stdin::Closed).then_some(InputFeed {
        kind: stdin,
        pending: Vec::new(),
        eof: false,
        escape: false,
    });
    let mut buf = [0u8; 256];
    while !control.is_stopping() {
        // Offer queued input to the guest.
        if let Some(f) = feed.as_mut().filter(|f| !f.pending.is_empty()) {
            let taken = serial
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .enqueue(&f.pending);
            f.pending.drain(..taken);
        }
        let want_stdin = feed
            .as_ref()
            .is_some_and(|f| f.pending.is_empty() && !f.eof);
        let mut fds = vec![
            poll_fd(control.eventfd().as_raw_fd()),
            poll_fd(signals.as_raw_fd()),
            poll_fd(rx_ready.as_raw_fd()),
        ];
        if want_stdin {
            fds.push(poll_fd(0));
        }
        let timeout_ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    control.stop(StopReason::Timeout);
                    break;
                }
                left.as_millis().clamp(1, i32::MAX as u128) as i32
            }
        };
        // SAFETY: fds is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            control.stop(StopReason::HostError(format!("poll failed: {e}")));
            break;
        }
        if fds[1].revents != 0 {
            if let Some(sig) = read_signal(signals) {
                control.stop(StopReason::Signal(sig));
                break;
            }
        }
        if fds[2].revents != 0 {
            // The guest emptied its FIFO: the loop top refills it.
            let _ = rx_ready.read();
        }
        if want_stdin && fds[3].revents != 0 {
            if let Some(f) = feed.as_mut() {
                let room = serial
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .fifo_room()
                    .max(1);
                let len = room.min(buf.len());
                match read_stdin(&mut buf[..len]) {
                    Ok(0) => f.eof = true,
                    Ok(n) => f.filter(&buf[..n], control),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        log::debug!("stdin: {e}; no more input");
                        f.eof = true;
                    }
                }
            }
        }
    }
}

fn poll_fd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

fn read_stdin(buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: reads at most buf.len() bytes into buf from fd 0.
    let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
