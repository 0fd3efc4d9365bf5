//! vCPU handles: another thread's way to a running vCPU. Each vCPU thread
//! owns a [`Mailbox`]; the thread that started it keeps the matching
//! [`VcpuHandle`], sends it [`VcpuEvent`]s and waits for the
//! [`VcpuResponse`] (the pattern of Firecracker's `VcpuHandle`).
//!
//! A command is queued first and the thread kicked after (the kick signal,
//! whose handler sets kvm_run.immediate_exit): KVM_RUN then returns, the
//! thread clears immediate_exit and only then reads its mailbox, so a kick
//! can never be lost between the two. A paused vCPU waits on its mailbox,
//! outside KVM_RUN, until it is resumed, its handle is dropped or the VM
//! stops. Every wait is bounded ([`DEFAULT_TIMEOUT`]); a vCPU thread that
//! has ended answers every command with [`CommandError::Exited`] at once.
//!
//! Commands are served whenever the vCPU is out of KVM_RUN for a kick or
//! paused: GetState of a running vCPU reads it as it was at the kick.

use std::borrow::Borrow;
use std::cell::Cell;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_debug_exit_arch, kvm_guest_debug};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{Killable, SIGRTMIN};

use super::state::VcpuState;
use super::Vcpu;

/// The signal that kicks a vCPU thread out of KVM_RUN (its handler is
/// [`super::kick_handler`]).
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

/// How long a handle waits for an answer unless told otherwise. A vCPU
/// answers within microseconds of its kick, unless it is in the middle of
/// an exit that waits (a full console queue, say).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a paused vCPU looks whether the VM is stopping, in case its
/// handle is not dropped (dropping it wakes the vCPU at once).
const PARK_POLL: Duration = Duration::from_millis(100);

/// What a vCPU thread is asked to do.
#[derive(Debug)]
pub enum VcpuEvent {
    /// Leave KVM_RUN and stay out until [`VcpuEvent::Resume`].
    Pause,
    Resume,
    GetState,
    SetState(Box<VcpuState>),
    /// KVM_SET_GUEST_DEBUG: breakpoints, single-stepping.
    SetGuestDebug(kvm_guest_debug),
    /// KVM_TRANSLATE of a guest virtual address.
    Translate(u64),
}

impl VcpuEvent {
    fn name(&self) -> &'static str {
        match self {
            VcpuEvent::Pause => "Pause",
            VcpuEvent::Resume => "Resume",
            VcpuEvent::GetState => "GetState",
            VcpuEvent::SetState(_) => "SetState",
            VcpuEvent::SetGuestDebug(_) => "SetGuestDebug",
            VcpuEvent::Translate(_) => "Translate",
        }
    }
}

/// A vCPU thread's answer.
#[derive(Debug)]
pub enum VcpuResponse {
    Paused,
    Resumed,
    State(Box<VcpuState>),
    /// SetState or SetGuestDebug done.
    Done,
    /// The guest physical address, or None if the address is not mapped.
    Translated(Option<u64>),
    /// The KVM call named failed.
    Failed(&'static str, kvm_ioctls::Error),
    /// The vCPU has left the guest for good or until the next boot (the
    /// VM is stopping): the command was not carried out.
    Stopped,
}

impl VcpuResponse {
    fn name(&self) -> &'static str {
        match self {
            VcpuResponse::Paused => "Paused",
            VcpuResponse::Resumed => "Resumed",
            VcpuResponse::State(_) => "State",
            VcpuResponse::Done => "Done",
            VcpuResponse::Translated(_) => "Translated",
            VcpuResponse::Failed(..) => "Failed",
            VcpuResponse::Stopped => "Stopped",
        }
    }
}

/// The `exception` of a [`DebugStop`] that was no debug exit but KVM's
/// failure to emulate an instruction, reported only to a debugger: a KVM
/// that emulates every guest instruction (this project's PVM hosts) fails
/// on an int3 under guest debugging instead of exiting for it, so the
/// debugger decides (its own breakpoint, or a crash after all). `pc` is
/// the instruction's address.
pub const EMULATION_FAILURE: u32 = u32::MAX;

/// A vCPU that stopped at a debug exit. It stays paused, as after
/// [`VcpuEvent::Pause`], until it is resumed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DebugStop {
    pub id: u8,
    pub exit: kvm_debug_exit_arch,
}

/// Errors of a command.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("vCPU {0} has stopped")]
    Exited(u8),
    #[error("vCPU {id} did not answer {what} within {timeout:?}")]
    Timeout {
        id: u8,
        what: &'static str,
        timeout: Duration,
    },
    #[error("vCPU {id}: {what} failed")]
    Kvm {
        id: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id} answered {what} with {got}")]
    Unexpected {
        id: u8,
        what: &'static str,
        got: &'static str,
    },
}

/// Commands and answers carry a sequence number, so that the answer to a
/// command that timed out is never taken for the next command's.
#[derive(Debug)]
pub(super) struct Request {
    seq: u64,
    pub(super) event: VcpuEvent,
}

struct Reply {
    seq: u64,
    response: VcpuResponse,
}

/// The vCPU thread's end of its handle.
pub struct Mailbox {
    id: u8,
    commands: Receiver<Request>,
    replies: Sender<Reply>,
    stops: Option<Sender<DebugStop>>,
    /// Written after each reported stop, to wake a poll(2) on it.
    wake: Option<Arc<EventFd>>,
}

/// What the mailbox holds for the vCPU thread.
pub(super) enum Next {
    Command(Request),
    /// Nothing (yet): go on as before.
    Nothing,
    /// The handle is gone: nothing can resume or stop this vCPU any more.
    Closed,
}

impl Mailbox {
    /// The next command, if one is queued.
    pub(super) fn poll(&self) -> Next {
        match self.commands.try_recv() {
            Ok(r) => Next::Command(r),
            Err(TryRecvError::Empty) => Next::Nothing,
            Err(TryRecvError::Disconnected) => Next::Closed,
        }
    }

    /// The next command, waiting for it at most [`PARK_POLL`].
    pub(super) fn wait(&self) -> Next {
        match self.commands.recv_timeout(PARK_POLL) {
            Ok(r) => Next::Command(r),
            Err(RecvTimeoutError::Timeout) => Next::Nothing,
            Err(RecvTimeoutError::Disconnected) => Next::Closed,
        }
    }

    pub(super) fn reply(&self, request: &Request, response: VcpuResponse) {
        // A handle that is gone wants no answer.
        let _ = self.replies.send(Reply {
            seq: request.seq,
            response,
        });
    }

    /// Reports a debug stop; false if nobody listens for them.
    pub(super) fn report(&self, exit: kvm_debug_exit_arch) -> bool {
        let stop = DebugStop { id: self.id, exit };
        let sent = self.stops.as_ref().is_some_and(|s| s.send(stop).is_ok());
        if sent {
            if let Some(w) = &self.wake {
                // Fails only when the counter would overflow: it is
                // readable then anyway.
                let _ = w.write(1);
            }
        }
        sent
    }

    /// Answers every queued command with [`VcpuResponse::Stopped`]: what a
    /// vCPU thread that has left the guest (the VM stopping) does while it
    /// waits, so that a command sent just as the VM stopped is answered at
    /// once instead of timing out.
    pub fn answer_stopped(&self) {
        while let Ok(request) = self.commands.try_recv() {
            self.reply(&request, VcpuResponse::Stopped);
        }
    }

    /// Whether debug stops are listened for.
    pub(super) fn debugged(&self) -> bool {
        self.stops.is_some()
    }

    /// Has every reported stop also written `wake` (an eventfd the
    /// listener polls).
    pub fn with_wake(mut self, wake: Arc<EventFd>) -> Self {
        self.wake = Some(wake);
        self
    }
}

/// A handle whose vCPU thread is not attached yet (see [`channel`]).
pub struct PendingHandle {
    id: u8,
    commands: Sender<Request>,
    replies: Receiver<Reply>,
}

impl PendingHandle {
    /// Holds the vCPU before its first instruction: a Pause is queued that
    /// its thread serves before it first enters KVM_RUN, so it stays
    /// parked until a Resume. (Sequence number 0 is never waited for: the
    /// handle's own commands count from 1, and its answer is skipped.)
    pub fn hold(&self) {
        let _ = self.commands.send(Request {
            seq: 0,
            event: VcpuEvent::Pause,
        });
    }

    /// The handle of `thread`, the thread that owns the matching mailbox.
    pub fn attach(self, thread: JoinHandle<Option<Vcpu>>) -> VcpuHandle {
        VcpuHandle {
            id: self.id,
            commands: Some(self.commands),
            replies: self.replies,
            thread: Some(thread),
            seq: Cell::new(0),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// A handle and its mailbox for vCPU `id`: the mailbox goes to the vCPU's
/// thread (for [`Vcpu::run`]), the handle is attached to that thread once
/// it is started. Debug stops are reported on `stops`; with None a debug
/// exit stops the VM (nothing asked for one).
pub fn channel(id: u8, stops: Option<Sender<DebugStop>>) -> (PendingHandle, Mailbox) {
    let (commands, commands_rx) = mpsc::channel();
    let (replies_tx, replies) = mpsc::channel();
    (
        PendingHandle {
            id,
            commands,
            replies,
        },
        Mailbox {
            id,
            commands: commands_rx,
            replies: replies_tx,
            stops,
            wake: None,
        },
    )
}

/// A running vCPU thread, seen from another thread (Send, not Sync: one
/// thread commands it). Dropping it closes the mailbox, kicks the thread
/// and joins it: the vCPU thread ends at that kick, or at once if it is
/// paused, whether the VM is stopping or not. [`VcpuHandle::finish`] does
/// the same without the join.
pub struct VcpuHandle {
    id: u8,
    /// None once the handle is finishing.
    commands: Option<Sender<Request>>,
    replies: Receiver<Reply>,
    thread: Option<JoinHandle<Option<Vcpu>>>,
    seq: Cell<u64>,
    timeout: Duration,
}

impl VcpuHandle {
    pub fn id(&self) -> u8 {
        self.id
    }

    /// How long each command waits for its answer.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// True once the vCPU thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Makes the vCPU thread leave KVM_RUN (or not enter it next).
    pub fn kick(&self) {
        if let Some(t) = self.thread.as_ref().filter(|t| !t.is_finished()) {
            if let Err(e) = t.kill(kick_signal()) {
                log::debug!("kicking vCPU {} failed: {e}", self.id);
            }
        }
    }

    /// Queues `event` and kicks the thread; returns the sequence number to
    /// [`wait`](Self::wait) for.
    fn send(&self, event: VcpuEvent) -> Result<u64, CommandError> {
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        let commands = self
            .commands
            .as_ref()
            .ok_or(CommandError::Exited(self.id))?;
        commands
            .send(Request { seq, event })
            .map_err(|_| CommandError::Exited(self.id))?;
        self.kick();
        Ok(seq)
    }

    /// The answer to command `seq`, by `deadline`.
    fn wait(
        &self,
        seq: u64,
        what: &'static str,
        deadline: Instant,
    ) -> Result<VcpuResponse, CommandError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.recv_timeout(left) {
                Ok(reply) if reply.seq == seq => return Ok(reply.response),
                // The late answer to a command that timed out.
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(CommandError::Timeout {
                        id: self.id,
                        what,
                        timeout: self.timeout,
                    })
                }
                Err(RecvTimeoutError::Disconnected) => return Err(CommandError::Exited(self.id)),
            }
        }
    }

    /// Sends `event` and waits for the answer; a failed KVM call is an
    /// error.
    pub fn request(&self, event: VcpuEvent) -> Result<VcpuResponse, CommandError> {
        let what = event.name();
        let seq = self.send(event)?;
        match self.wait(seq, what, Instant::now() + self.timeout)? {
            VcpuResponse::Failed(call, source) => Err(CommandError::Kvm {
                id: self.id,
                what: call,
                source,
            }),
            VcpuResponse::Stopped => Err(CommandError::Exited(self.id)),
            r => Ok(r),
        }
    }

    fn unexpected(&self, what: &'static str, got: &VcpuResponse) -> CommandError {
        CommandError::Unexpected {
            id: self.id,
            what,
            got: got.name(),
        }
    }

    /// Returns once the vCPU is out of KVM_RUN and parked.
    pub fn pause(&self) -> Result<(), CommandError> {
        match self.request(VcpuEvent::Pause)? {
            VcpuResponse::Paused => Ok(()),
            r => Err(self.unexpected("Pause", &r)),
        }
    }

    pub fn resume(&self) -> Result<(), CommandError> {
        match self.request(VcpuEvent::Resume)? {
            VcpuResponse::Resumed => Ok(()),
            r => Err(self.unexpected("Resume", &r)),
        }
    }

    pub fn state(&self) -> Result<VcpuState, CommandError> {
        match self.request(VcpuEvent::GetState)? {
            VcpuResponse::State(s) => Ok(*s),
            r => Err(self.unexpected("GetState", &r)),
        }
    }

    pub fn set_state(&self, state: &VcpuState) -> Result<(), CommandError> {
        match self.request(VcpuEvent::SetState(Box::new(state.clone())))? {
            VcpuResponse::Done => Ok(()),
            r => Err(self.unexpected("SetState", &r)),
        }
    }

    pub fn set_guest_debug(&self, debug: &kvm_guest_debug) -> Result<(), CommandError> {
        match self.request(VcpuEvent::SetGuestDebug(*debug))? {
            VcpuResponse::Done => Ok(()),
            r => Err(self.unexpected("SetGuestDebug", &r)),
        }
    }

    /// The guest physical address `gva` maps to, in the vCPU's current
    /// address space; None if it maps nowhere.
    pub fn translate(&self, gva: u64) -> Result<Option<u64>, CommandError> {
        match self.request(VcpuEvent::Translate(gva))? {
            VcpuResponse::Translated(gpa) => Ok(gpa),
            r => Err(self.unexpected("Translate", &r)),
        }
    }

    /// Closes the mailbox and kicks the thread, which then ends; returns
    /// the thread to join.
    pub fn finish(mut self) -> JoinHandle<Option<Vcpu>> {
        self.commands = None;
        self.kick();
        self.thread
            .take()
            .expect("only finish and drop take the thread")
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.commands = None;
            self.kick();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// Sends every handle the command `make` builds, then waits for every
/// answer (each by its own timeout from now) and checks it with `expect`;
/// returns the first error, having waited for all.
fn all<H: Borrow<VcpuHandle>>(
    handles: &[H],
    what: &'static str,
    make: fn() -> VcpuEvent,
    expect: fn(&VcpuResponse) -> bool,
) -> Result<(), CommandError> {
    let start = Instant::now();
    let sent: Vec<_> = handles.iter().map(|h| h.borrow().send(make())).collect();
    let mut first = None;
    for (h, seq) in handles.iter().map(Borrow::borrow).zip(sent) {
        let r = seq
            .and_then(|seq| h.wait(seq, what, start + h.timeout))
            .and_then(|r| {
                if expect(&r) {
                    Ok(())
                } else if let VcpuResponse::Stopped = r {
                    Err(CommandError::Exited(h.id))
                } else if let VcpuResponse::Failed(call, source) = r {
                    Err(CommandError::Kvm {
                        id: h.id,
                        what: call,
                        source,
                    })
                } else {
                    Err(h.unexpected(what, &r))
                }
            });
        if let Err(e) = r {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// All-stop: pauses every vCPU and returns once all are parked (every
/// kick goes out before the first answer is awaited).
pub fn pause_all<H: Borrow<VcpuHandle>>(handles: &[H]) -> Result<(), CommandError> {
    all(
        handles,
        "Pause",
        || VcpuEvent::Pause,
        |r| matches!(r, VcpuResponse::Paused),
    )
}

/// Resumes every vCPU.
pub fn resume_all<H: Borrow<VcpuHandle>>(handles: &[H]) -> Result<(), CommandError> {
    all(
        handles,
        "Resume",
        || VcpuEvent::Resume,
        |r| matches!(r, VcpuResponse::Resumed),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handle whose "vCPU thread" is `body`, run on the mailbox.
    fn fake(body: fn(Mailbox)) -> VcpuHandle {
        // Handles kick their thread.
        super::super::install_kick_handler().unwrap();
        let (pending, mailbox) = channel(3, None);
        let thread = std::thread::spawn(move || {
            body(mailbox);
            None
        });
        let mut h = pending.attach(thread);
        h.set_timeout(Duration::from_millis(200));
        h
    }

    fn answer_everything(mailbox: Mailbox) {
        loop {
            match mailbox.wait() {
                Next::Command(r) => {
                    let response = match r.event {
                        VcpuEvent::Pause => VcpuResponse::Paused,
                        VcpuEvent::Resume => VcpuResponse::Resumed,
                        VcpuEvent::Translate(gva) => VcpuResponse::Translated(Some(gva)),
                        _ => VcpuResponse::Failed("KVM_GET_REGS", kvm_ioctls::Error::new(5)),
                    };
                    mailbox.reply(&r, response);
                }
                Next::Nothing => {}
                Next::Closed => return,
            }
        }
    }

    #[test]
    fn commands_get_their_answers() {
        let h = fake(answer_everything);
        h.pause().unwrap();
        assert_eq!(h.translate(0x1000).unwrap(), Some(0x1000));
        h.resume().unwrap();
        let e = h.state().unwrap_err();
        assert!(
            matches!(
                e,
                CommandError::Kvm {
                    id: 3,
                    what: "KVM_GET_REGS",
                    ..
                }
            ),
            "{e}"
        );
        pause_all(std::slice::from_ref(&h)).unwrap();
        resume_all(std::slice::from_ref(&h)).unwrap();
    }

    #[test]
    fn a_thread_that_ended_is_an_error_not_a_hang() {
        let h = fake(|_| {});
        let deadline = Instant::now() + Duration::from_secs(5);
        while !h.is_finished() {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        let start = Instant::now();
        assert!(matches!(h.pause(), Err(CommandError::Exited(3))));
        assert!(matches!(
            pause_all(std::slice::from_ref(&h)),
            Err(CommandError::Exited(3))
        ));
        assert!(start.elapsed() < Duration::from_millis(200));
    }

    #[test]
    fn a_thread_that_never_answers_times_out() {
        let h = fake(|mailbox| {
            // Takes the command, never answers, stays alive until closed.
            while !matches!(mailbox.wait(), Next::Closed) {}
        });
        let e = h.pause().unwrap_err();
        assert_eq!(
            e.to_string(),
            "vCPU 3 did not answer Pause within 200ms",
            "{e:?}"
        );
    }

    #[test]
    fn a_late_answer_is_not_taken_for_the_next_one() {
        let h = fake(|mailbox| {
            let mut n = 0;
            loop {
                match mailbox.wait() {
                    Next::Command(r) => {
                        n += 1;
                        if n == 1 {
                            // Answers the first command after its timeout.
                            std::thread::sleep(Duration::from_millis(300));
                            mailbox.reply(&r, VcpuResponse::Paused);
                        } else {
                            mailbox.reply(&r, VcpuResponse::Translated(None));
                        }
                    }
                    Next::Nothing => {}
                    Next::Closed => return,
                }
            }
        });
        assert!(matches!(h.pause(), Err(CommandError::Timeout { .. })));
        assert_eq!(h.translate(0).unwrap(), None);
    }

    #[test]
    fn a_debug_stop_needs_a_listener() {
        let (_, mailbox) = channel(1, None);
        assert!(!mailbox.report(kvm_debug_exit_arch::default()));
        let (tx, rx) = mpsc::channel();
        let (_, mailbox) = channel(2, Some(tx));
        assert!(mailbox.report(kvm_debug_exit_arch {
            pc: 0x1234,
            ..Default::default()
        }));
        let stop = rx.try_recv().unwrap();
        assert_eq!((stop.id, stop.exit.pc), (2, 0x1234));
    }
}
