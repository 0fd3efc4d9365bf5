//! The console thread (kvmini's main thread while a guest runs): serial
//! output from the vCPUs to the back ends, the log and the watchers; input
//! from stdin, ptys and sockets into the UARTs; signals and the timeout.

pub mod backend;
mod log_file;
pub mod queue;
mod terminal;
pub mod watch;

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use vmm_sys_util::eventfd::EventFd;

use crate::control::{StopReason, VmControl};
use crate::devices::serial::SerialDevice;
use crate::event_loop::{Interest, Subscriber};
use crate::ktap::{Ktap, Verdict as KtapVerdict};
pub use backend::Backend;
pub use log_file::SerialLog;
use queue::OutQueue;
pub use terminal::{restore_terminal, RawTerminal};
use watch::{Event, FixedWatch, PatternWatch, PANIC_BANNER};

/// COM1 output after which the console calls `on_heavy_output`.
const HEAVY_OUTPUT: usize = 4096;

/// How long output may still take to leave once the VM has stopped.
const FINAL_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// How often flowing output is collected (see [`ConsoleLoop`]).
const BATCH_TICK: std::time::Duration = std::time::Duration::from_millis(2);

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

/// Signals the console turns into a clean stop: the ones that end a
/// process by default and that users and supervisors send (timeout(1)
/// sends SIGTERM, a terminal SIGHUP, a CI runner SIGUSR1 or SIGALRM at
/// times). SIGPIPE is ignored by Rust's runtime (a write then fails).
const STOP_SIGNALS: [libc::c_int; 7] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
];

fn stop_signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t for the calls below.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

/// Blocks the stop signals in the calling thread and the threads it
/// spawns later. main calls it first of all, so that a signal that comes
/// while kvmini sets up waits, pending, for [`signal_fd`] to report it,
/// instead of ending kvmini without its last line. SIGXFSZ is ignored: a
/// file past the size limit then fails its write, which kvmini reports.
pub fn block_stop_signals() -> io::Result<()> {
    let set = stop_signal_set();
    // SAFETY: valid set pointer; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: SIG_IGN for SIGXFSZ installs no handler code.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    Ok(())
}

/// Blocks the stop signals (see [`block_stop_signals`]) and returns a
/// signalfd that reports them, those already pending included.
pub fn signal_fd() -> io::Result<OwnedFd> {
    block_stop_signals()?;
    let set = stop_signal_set();
    // SAFETY: valid set pointer; a new descriptor is returned or -1.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a freshly created descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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

/// One serial port as the console sees it, for the life of kvmini (it
/// survives guest reboots).
pub struct Port {
    pub name: &'static str,
    backend: Backend,
    log: Option<SerialLog>,
    /// Input read but not yet taken by the guest's FIFO.
    pending: Vec<u8>,
    /// Output not yet taken by the back end.
    out: VecDeque<u8>,
    stdin_eof: bool,
    escape: bool,
    /// The back end's first write error, after which output is dropped.
    output_failed: Option<String>,
    /// Output dropped after the back end failed (a full disk, a closed
    /// pipe), reported at the end.
    lost: usize,
    /// The last byte the guest wrote to this port, if any.
    last_byte: Option<u8>,
}

/// Output held for a back end that is not keeping up; beyond it, the guest
/// waits (or, for lossy back ends, the oldest bytes go).
const OUT_LIMIT: usize = 256 * 1024;

impl Port {
    pub fn new(name: &'static str, backend: Backend, log: Option<SerialLog>) -> Self {
        Self {
            name,
            backend,
            log,
            pending: Vec::new(),
            out: VecDeque::new(),
            stdin_eof: false,
            escape: false,
            output_failed: None,
            lost: 0,
            last_byte: None,
        }
    }

    /// The port's `--serial-log`, if it has one.
    pub fn log(&self) -> Option<&SerialLog> {
        self.log.as_ref()
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// True if this port writes to stdout and stdout is a terminal.
    fn on_terminal(&self) -> bool {
        use std::io::IsTerminal;
        match &self.backend {
            Backend::Stdio(f) => f.is_terminal(),
            _ => false,
        }
    }

    /// True if this port's back end is stdin/stdout.
    pub fn is_stdio(&self) -> bool {
        self.backend.is_stdio()
    }

    fn output(&mut self, bytes: &[u8]) {
        if let Some(&b) = bytes.last() {
            self.last_byte = Some(b);
        }
        self.out.extend(bytes);
        if let Some(l) = self.log.as_mut() {
            l.write(bytes);
        }
        self.flush();
    }

    /// When kvmini stopped the guest in the middle of a line on stdout,
    /// ends that line, so that what the shell prints next (`echo $?`, a
    /// prompt, kvmini's own message) starts on a line of its own. Only the
    /// stdout back end gets it; files, logs and sockets keep the guest's
    /// bytes exactly.
    fn end_line(&mut self) {
        if !self.is_stdio() || matches!(self.last_byte, None | Some(b'\n')) {
            return;
        }
        // A terminal keeps its output processing in kvmini's raw mode (see
        // RawTerminal::enter), so \n ends the line there as in a pipe.
        self.out.push_back(b'\n');
        self.last_byte = Some(b'\n');
        self.flush();
    }

    /// Hands the back end and the log what they take now, never blocking.
    fn flush(&mut self) {
        if let Some(l) = self.log.as_mut() {
            l.flush();
        }
        while !self.out.is_empty() {
            let (head, _) = self.out.as_slices();
            match self.backend.write_some(head) {
                Ok(0) => break,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) => {
                    // A closed pipe or a full disk: the output is lost, the
                    // guest keeps running. Say so once.
                    if self.output_failed.is_none() {
                        log::warn!("{}: output lost: {e}", self.name);
                        self.output_failed = Some(e.to_string());
                    }
                    self.lost += self.out.len();
                    self.out.clear();
                }
            }
        }
        if self.backend.is_lossy() {
            let excess = self.out.len().saturating_sub(backend::REPLAY_LIMIT);
            self.out.drain(..excess);
        }
    }

    /// False while a slow back end holds [`OUT_LIMIT`] bytes: the guest's
    /// output then waits in its queue, and the guest with it.
    fn accepts_output(&self) -> bool {
        self.out.len() < OUT_LIMIT && self.log.as_ref().is_none_or(SerialLog::accepts_output)
    }

    /// The descriptors to wait on for room, where output is waiting: the
    /// back end's and the log's.
    fn blocked_output_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        let backend = if self.out.is_empty() {
            None
        } else {
            self.backend.output_fd()
        };
        backend
            .into_iter()
            .chain(self.log.as_ref().and_then(SerialLog::blocked_fd))
    }

    /// Says, once the guest is gone, what output never reached where the
    /// user sent it, and why. (Lossy back ends drop by design.)
    fn report_losses(&self) {
        let undelivered = if self.backend.is_lossy() {
            0
        } else {
            self.out.len()
        };
        if self.lost + undelivered > 0 {
            let why = self
                .output_failed
                .clone()
                .unwrap_or_else(|| "its reader did not take them".into());
            log::warn!(
                "{}: {} bytes of output not delivered ({why})",
                self.name,
                self.lost + undelivered
            );
        }
        if let Some(l) = &self.log {
            if let (n @ 1.., why) = l.lost() {
                let why = why.map_or("its reader did not take them".to_string(), |e| {
                    e.to_string()
                });
                log::warn!("--serial-log: {n} bytes not written ({why})");
            }
        }
    }

    /// Turns raw terminal bytes into guest bytes; Ctrl-A x quits.
    fn typed(&mut self, bytes: &[u8], tty: bool, control: &VmControl) {
        if !tty {
            self.pending.extend_from_slice(bytes);
            return;
        }
        for &b in bytes {
            if self.escape {
                self.escape = false;
                match b {
                    b'x' | b'X' => control.stop(StopReason::ConsoleQuit),
                    ESCAPE => self.pending.push(ESCAPE),
                    other => self.pending.extend_from_slice(&[ESCAPE, other]),
                }
            } else if b == ESCAPE {
                self.escape = true;
            } else {
                self.pending.push(b);
            }
        }
    }
}

/// The per-boot connection of a [`Port`] to its UART.
pub struct Wiring {
    pub device: Arc<Mutex<SerialDevice>>,
    pub queue: Arc<OutQueue>,
    pub rx_ready: EventFd,
}

/// Everything the console thread watches.
pub struct Console {
    /// COM1 first.
    pub ports: Vec<Port>,
    stdin: Stdin,
    patterns: PatternWatch,
    panic_watch: FixedWatch,
    panicked: bool,
    /// The first `--fail-on`/`--until` match (or `--ktap` verdict) of this
    /// boot.
    verdict: Option<StopReason>,
    /// `--ktap`'s reader of COM1, new for each boot.
    ktap: Option<Ktap>,
    /// `--input` bytes held back until `--input-after` matches.
    deferred_input: Option<Vec<u8>>,
}

/// What the event loop's tokens for the console stand for: the kind of
/// descriptor in the low byte, the port above it.
#[derive(Clone, Copy)]
enum Source {
    Output,
    RxReady,
    Input,
    Listen,
    Writable,
}

impl Source {
    const ALL: [Source; 5] = [
        Source::Output,
        Source::RxReady,
        Source::Input,
        Source::Listen,
        Source::Writable,
    ];

    fn token(self, port: usize) -> u32 {
        (port as u32) << 8 | self as u32
    }

    fn from_token(token: u32) -> Option<(Source, usize)> {
        let kind = Source::ALL.get((token & 0xff) as usize)?;
        Some((*kind, (token >> 8) as usize))
    }
}

impl Console {
    pub fn new(
        ports: Vec<Port>,
        stdin: Stdin,
        patterns: PatternWatch,
        input: Option<Vec<u8>>,
        input_after: bool,
    ) -> Self {
        let mut console = Self {
            ports,
            stdin,
            patterns,
            panic_watch: FixedWatch::new(PANIC_BANNER),
            panicked: false,
            verdict: None,
            ktap: None,
            deferred_input: None,
        };
        match (input, input_after) {
            (Some(bytes), true) => console.deferred_input = Some(bytes),
            (Some(bytes), false) => console.ports[0].pending = bytes,
            (None, _) => {}
        }
        console
    }

    /// Reads COM1's output as a KTAP report from now on (`--ktap`).
    pub fn watch_ktap(&mut self, keep_going: bool) {
        self.ktap = Some(Ktap::new(keep_going));
    }

    /// The KTAP reader of this boot, with `--ktap`.
    pub fn ktap(&self) -> Option<&Ktap> {
        self.ktap.as_ref()
    }

    /// True once COM1 showed the Linux panic banner during this boot.
    pub fn panicked(&self) -> bool {
        self.panicked
    }

    /// The first `--fail-on` or `--until` match, if any.
    pub fn verdict(&self) -> Option<StopReason> {
        self.verdict.clone()
    }

    /// Called when the guest boots again in place.
    pub fn rebooted(&mut self) {
        self.panicked = false;
        self.verdict = None;
        if let Some(k) = &mut self.ktap {
            *k = Ktap::new(k.keep_going());
        }
    }

    fn wants_input(&self, i: usize) -> bool {
        let p = &self.ports[i];
        p.pending.is_empty()
            && if p.backend.is_stdio() {
                self.stdin != Stdin::Closed && !p.stdin_eof
            } else {
                p.backend.input_fd().is_some()
            }
    }

    fn input_fd(&self, i: usize) -> Option<RawFd> {
        if self.ports[i].backend.is_stdio() {
            Some(0)
        } else {
            self.ports[i].backend.input_fd()
        }
    }

    /// Moves output from port `i`'s queue to its back end and watchers;
    /// false if there was none.
    fn pump_output(
        &mut self,
        i: usize,
        w: &Wiring,
        control: &VmControl,
        buf: &mut Vec<u8>,
    ) -> bool {
        w.queue.drain(buf);
        if buf.is_empty() {
            return false;
        }
        self.ports[i].output(buf);
        if i != 0 {
            return true;
        }
        if self.panic_watch.feed(buf) {
            self.panicked = true;
        }
        if let Some(verdict) = self.ktap.as_mut().and_then(|k| k.feed(buf)) {
            let reason = match verdict {
                KtapVerdict::Passed => StopReason::KtapPassed,
                KtapVerdict::Failed(line) => StopReason::KtapFailed(line),
            };
            self.decide(reason, control);
        }
        for event in self.patterns.feed(buf) {
            match event {
                Event::FailOn(p) => self.decide(StopReason::FailOn(p), control),
                Event::Until(p) => self.decide(StopReason::Until(p), control),
                Event::InputAfter => {
                    if let Some(bytes) = self.deferred_input.take() {
                        self.ports[0].pending.extend_from_slice(&bytes);
                    }
                }
            }
        }
        true
    }

    /// Records a pattern verdict (the first one wins) and stops the VM.
    fn decide(&mut self, verdict: StopReason, control: &VmControl) {
        if self.verdict.is_none() {
            self.verdict = Some(verdict.clone());
        }
        control.stop(verdict);
    }

    fn read_input(&mut self, i: usize, w: &Wiring, control: &VmControl) {
        let mut buf = [0u8; 256];
        let room = w
            .device
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fifo_room()
            .clamp(1, buf.len());
        let tty = self.stdin == Stdin::Tty;
        let port = &mut self.ports[i];
        if port.backend.is_stdio() {
            match read_stdin(&mut buf[..room]) {
                Ok(0) => port.stdin_eof = true,
                Ok(n) => port.typed(&buf[..n], tty, control),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    log::debug!("stdin: {e}; no more input");
                    port.stdin_eof = true;
                }
            }
        } else {
            let n = port.backend.read_input(&mut buf[..room]);
            port.pending.extend_from_slice(&buf[..n]);
        }
    }

    /// After the vCPUs stopped: delivers every byte they produced, waiting
    /// at most [`FINAL_FLUSH`] for a back end that is not reading.
    pub fn finish(&mut self, control: &VmControl, wiring: &[Wiring]) {
        let mut buf = Vec::new();
        for (i, w) in wiring.iter().enumerate() {
            self.pump_output(i, w, control, &mut buf);
            w.queue.close();
        }
        // On a terminal kvmini's last line always starts a line of its own;
        // elsewhere only when kvmini cut the guest's line itself.
        if control.reason().as_ref().is_some_and(ended_by_kvmini) || self.ports[0].on_terminal() {
            self.ports[0].end_line();
        }
        let give_up = Instant::now() + FINAL_FLUSH;
        for p in &mut self.ports {
            loop {
                // A lossy back end (pty, socket) is not waited for.
                let lossy = p.backend.is_lossy();
                let mut fds: Vec<libc::pollfd> = p
                    .blocked_output_fds()
                    .filter(|&fd| !lossy || Some(fd) != p.backend.output_fd())
                    .map(|fd| libc::pollfd {
                        fd,
                        events: libc::POLLOUT,
                        revents: 0,
                    })
                    .collect();
                let left = give_up.saturating_duration_since(Instant::now());
                if fds.is_empty() || left.is_zero() {
                    break;
                }
                // SAFETY: fds.len() valid pollfds.
                unsafe {
                    libc::poll(
                        fds.as_mut_ptr(),
                        fds.len() as libc::nfds_t,
                        left.as_millis().max(1) as i32,
                    )
                };
                p.flush();
            }
            p.report_losses();
        }
    }
}

/// The console during one boot, as the main thread's event loop sees it:
/// every port's output queue, back end and input, and the UARTs.
pub struct ConsoleLoop<'a> {
    console: &'a mut Console,
    wiring: &'a [Wiring],
    /// Runs once, when COM1 has printed [`HEAVY_OUTPUT`] bytes this boot.
    on_heavy_output: Option<&'a dyn Fn()>,
    com1_bytes: usize,
    /// While output flows, the console collects it every [`BATCH_TICK`]
    /// instead of being woken for each byte: the vCPU then only copies
    /// bytes, and the host gets them in few, large writes. The first byte
    /// after a quiet spell still wakes the console at once.
    flowing: bool,
    buf: Vec<u8>,
}

impl<'a> ConsoleLoop<'a> {
    pub fn new(
        console: &'a mut Console,
        wiring: &'a [Wiring],
        on_heavy_output: Option<&'a dyn Fn()>,
    ) -> Self {
        Self {
            console,
            wiring,
            on_heavy_output,
            com1_bytes: 0,
            flowing: false,
            buf: Vec::with_capacity(queue::QUEUE_LIMIT),
        }
    }
}

impl Subscriber for ConsoleLoop<'_> {
    /// Offers queued input to the guests.
    fn prepare(&mut self, _: &VmControl) {
        for (port, w) in self.console.ports.iter_mut().zip(self.wiring) {
            if !port.pending.is_empty() {
                let taken = w
                    .device
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .enqueue(&port.pending);
                port.pending.drain(..taken);
            }
        }
    }

    fn interest(&self, set: &mut Interest) {
        let c = &self.console;
        for (i, port) in c.ports.iter().enumerate() {
            for fd in port.blocked_output_fds() {
                set.add(fd, libc::POLLOUT, Source::Writable.token(i));
            }
        }
        for (i, w) in self.wiring.iter().enumerate() {
            if c.ports[i].accepts_output() {
                set.add(
                    w.queue.eventfd().as_raw_fd(),
                    libc::POLLIN,
                    Source::Output.token(i),
                );
            }
            set.add(
                w.rx_ready.as_raw_fd(),
                libc::POLLIN,
                Source::RxReady.token(i),
            );
            if c.wants_input(i) {
                if let Some(fd) = c.input_fd(i) {
                    set.add(fd, libc::POLLIN, Source::Input.token(i));
                }
            }
            if let Some(fd) = c.ports[i].backend.listen_fd() {
                set.add(fd, libc::POLLIN, Source::Listen.token(i));
            }
        }
    }

    fn wake_at(&self) -> Option<Instant> {
        let tick = self.flowing.then(|| Instant::now() + BATCH_TICK);
        self.console
            .ports
            .iter()
            .filter_map(|p| p.backend.wake_at())
            .chain(tick)
            .min()
    }

    fn after_wait(&mut self, control: &VmControl) {
        if !self.flowing {
            return;
        }
        self.flowing = false;
        for (i, w) in self.wiring.iter().enumerate() {
            if self.console.ports[i].accepts_output() {
                self.flowing |= self.console.pump_output(i, w, control, &mut self.buf);
                if i == 0 {
                    self.com1_bytes += self.buf.len();
                }
            }
        }
        if self.com1_bytes >= HEAVY_OUTPUT {
            if let Some(f) = self.on_heavy_output.take() {
                f();
            }
        }
    }

    fn ready(&mut self, token: u32, _: libc::c_short, control: &VmControl) {
        let Some((source, i)) = Source::from_token(token) else {
            return;
        };
        let Some(w) = self.wiring.get(i) else {
            return;
        };
        match source {
            Source::Output => {
                self.flowing |= self.console.pump_output(i, w, control, &mut self.buf)
            }
            Source::RxReady => {
                let _ = w.rx_ready.read();
            }
            Source::Input => self.console.read_input(i, w, control),
            Source::Listen => {
                self.console.ports[i].backend.accept();
                self.console.ports[i].flush();
            }
            Source::Writable => {
                self.console.ports[i].flush();
                self.flowing = true;
            }
        }
    }
}

/// Before the first boot, with `pty,wait` or `socket=PATH,wait`: serves
/// the waiting back ends until each has its client, then sets `done`.
pub struct WaitForClients<'a> {
    ports: &'a mut [Port],
    waiting: Vec<usize>,
    done: &'a std::cell::Cell<bool>,
}

/// How often a waiting pty is looked at: a pty says nothing when its slave
/// is opened, only its master's hang-up ends.
const PTY_WAIT_TICK: std::time::Duration = std::time::Duration::from_millis(20);

impl<'a> WaitForClients<'a> {
    /// `waits[i]`: whether port `i` waits for a client.
    pub fn new(ports: &'a mut [Port], waits: &[bool], done: &'a std::cell::Cell<bool>) -> Self {
        let waiting = (0..ports.len())
            .filter(|&i| waits.get(i) == Some(&true))
            .collect();
        Self {
            ports,
            waiting,
            done,
        }
    }
}

impl Subscriber for WaitForClients<'_> {
    fn prepare(&mut self, _: &VmControl) {
        let ports = &mut *self.ports;
        self.waiting.retain(|&i| !ports[i].backend.has_client());
        if self.waiting.is_empty() {
            self.done.set(true);
        }
    }

    fn interest(&self, set: &mut Interest) {
        for &i in &self.waiting {
            if let Some(fd) = self.ports[i].backend.listen_fd() {
                set.add(fd, libc::POLLIN, i as u32);
            }
        }
    }

    fn wake_at(&self) -> Option<Instant> {
        let pty = self
            .waiting
            .iter()
            .any(|&i| matches!(self.ports[i].backend, Backend::Pty { .. }));
        let paused = self
            .waiting
            .iter()
            .filter_map(|&i| self.ports[i].backend.wake_at());
        paused
            .chain(pty.then(|| Instant::now() + PTY_WAIT_TICK))
            .min()
    }

    fn after_wait(&mut self, _: &VmControl) {
        let ports = &mut *self.ports;
        self.waiting.retain(|&i| !ports[i].backend.has_client());
        if self.waiting.is_empty() {
            self.done.set(true);
        }
    }

    fn ready(&mut self, token: u32, _: libc::c_short, _: &VmControl) {
        if let Some(p) = self.ports.get_mut(token as usize) {
            p.backend.accept();
        }
    }
}

/// True for the endings kvmini chooses itself, which can cut a line the
/// guest was still printing: a pattern matched, the timeout, a signal,
/// Ctrl-A x.
fn ended_by_kvmini(reason: &StopReason) -> bool {
    matches!(
        reason,
        StopReason::Until(_)
            | StopReason::FailOn(_)
            | StopReason::KtapPassed
            | StopReason::KtapFailed(_)
            | StopReason::Timeout
            | StopReason::Signal(_)
            | StopReason::ConsoleQuit
    )
}

impl Drop for Console {
    fn drop(&mut self) {
        for p in &self.ports {
            p.backend.cleanup();
        }
    }
}
