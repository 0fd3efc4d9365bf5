//! A vCPU: its initial state, its run loop, and the commands its thread
//! serves (see [`handle`]).

pub mod coalesced;
pub mod exit;
pub mod handle;
pub mod state;
pub mod translate;

use std::cell::Cell;

use kvm_bindings::{kvm_run, CpuId};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use crate::arch::x86_64::{cpuid, regs};
use crate::bus::Bus;
use crate::control::{StopReason, VmControl};
use crate::trace::BootTrace;
use coalesced::RawExit;
use exit::{Action, TripleFault};
pub use handle::{kick_signal, pause_all, resume_all, CommandError, VcpuHandle};
use handle::{Mailbox, Next, VcpuEvent, VcpuResponse};
pub use state::VcpuState;
use translate::{translate, RunInfo, Translated};

/// Errors creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create vCPU {0}")]
    Create(u8, #[source] kvm_ioctls::Error),
    #[error("cannot set up vCPU {id}: {what}")]
    Setup {
        id: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot build the MSR list")]
    Msrs(#[source] vmm_sys_util::fam::Error),
}

thread_local! {
    /// This thread's kvm_run mapping while it runs a vCPU, for the kick
    /// handler. A const initialiser: no lazy setup inside a signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The kick signal's handler: makes the interrupted (or the next) KVM_RUN
/// of this thread return at once. Without it a kick that lands just before
/// KVM_RUN is entered would be lost and the vCPU would keep running.
pub extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is this thread's live kvm_run mapping (set by
        // Vcpu::run, cleared before it returns); a byte store is
        // async-signal-safe.
        unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!((*run).immediate_exit), 1) };
    }
}

pub struct Vcpu {
    fd: VcpuFd,
    id: u8,
    coalesced: bool,
    /// It has an in-kernel local APIC (see [`Vcpu::configure_lapic`]).
    lapic: bool,
    /// Its state before it first ran, for a reboot in place (see
    /// [`Vcpu::save_reset_state`]).
    reset_state: Option<Box<VcpuState>>,
}

/// The paravirtual MSRs by which a Linux guest gives KVM guest addresses
/// to write to (kvmclock, async page faults, steal time, PV EOI). Zeroing
/// them at a reboot in place turns that off: a guest that crashed without
/// turning them off would otherwise have KVM keep writing into what is
/// by then the next boot's memory.
const PV_MSRS: &[u32] = &[
    0x12,        // MSR_KVM_SYSTEM_TIME
    0x4b56_4d01, // MSR_KVM_SYSTEM_TIME_NEW
    0x4b56_4d02, // MSR_KVM_ASYNC_PF_EN
    0x4b56_4d03, // MSR_KVM_STEAL_TIME
    0x4b56_4d04, // MSR_KVM_PV_EOI_EN
];

impl Vcpu {
    pub fn new(vm: &VmFd, id: u8) -> Result<Self, Error> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|e| Error::Create(id, e))?;
        Ok(Self {
            fd,
            id,
            coalesced: false,
            lapic: false,
            reset_state: None,
        })
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    fn setup<T>(&self, what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, Error> {
        r.map_err(|source| Error::Setup {
            id: self.id,
            what,
            source,
        })
    }

    /// CPUID and MSRs: every vCPU.
    pub fn configure_common(&self, supported: &CpuId, cpus: u8) -> Result<(), Error> {
        let mut cpuid = supported.clone();
        cpuid::adjust(&mut cpuid, self.id, cpus);
        self.setup("CPUID", self.fd.set_cpuid2(&cpuid))?;
        let msrs = regs::boot_msrs().map_err(Error::Msrs)?;
        self.setup("MSRs", self.fd.set_msrs(&msrs))?;
        Ok(())
    }

    /// With the in-kernel irqchip: local APIC LINT0 in ExtINT mode and LINT1
    /// in NMI mode (the PC's virtual-wire setup), as firmware leaves them.
    pub fn configure_lapic(&mut self) -> Result<(), Error> {
        const APIC_LVT0: usize = 0x350;
        const APIC_LVT1: usize = 0x360;
        const DELIVERY_EXTINT: u32 = 0x7 << 8;
        const DELIVERY_NMI: u32 = 0x4 << 8;
        let mut lapic = self.setup("local APIC", self.fd.get_lapic())?;
        for (reg, mode) in [(APIC_LVT0, DELIVERY_EXTINT), (APIC_LVT1, DELIVERY_NMI)] {
            let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
            let value = (u32::from_le_bytes(bytes) & !(0x7 << 8)) | mode;
            for (i, b) in value.to_le_bytes().iter().enumerate() {
                lapic.regs[reg + i] = *b as libc::c_char;
            }
        }
        self.setup("local APIC", self.fd.set_lapic(&lapic))?;
        self.lapic = true;
        Ok(())
    }

    /// Registers for the boot vCPU, which starts at the kernel's entry.
    pub fn configure_boot(&self, entry: regs::Entry, cr3: u64) -> Result<(), Error> {
        let sregs = self.setup("special registers", self.fd.get_sregs())?;
        self.setup(
            "special registers",
            self.fd.set_sregs(&regs::sregs(sregs, entry, cr3)),
        )?;
        self.setup("registers", self.fd.set_regs(&regs::regs(entry)))?;
        self.setup("FPU", self.fd.set_fpu(&regs::fpu()))?;
        Ok(())
    }

    /// Keeps the vCPU's state as it is now, configured and not yet run, for
    /// [`Vcpu::reset`].
    pub fn save_reset_state(&mut self) -> Result<(), Error> {
        let state =
            VcpuState::read(&self.fd, self.lapic).map_err(|(what, source)| Error::Setup {
                id: self.id,
                what,
                source,
            })?;
        self.reset_state = Some(Box::new(state));
        Ok(())
    }

    /// The reset line, for a guest rebooted in place: the vCPU gets back
    /// the state [`Vcpu::save_reset_state`] kept (registers, MSRs, local
    /// APIC, run state, pending events) and the paravirtual MSRs are
    /// zeroed. On the vCPU's own thread, out of KVM_RUN.
    pub fn reset(&mut self) -> Result<(), String> {
        let Some(state) = &self.reset_state else {
            return Err(format!("vCPU {}: no state to reset to", self.id));
        };
        state
            .write(&self.fd)
            .map_err(|(what, e)| format!("vCPU {}: {what} failed at reset: {e}", self.id))?;
        let zeros: Vec<_> = PV_MSRS
            .iter()
            .map(|&index| kvm_bindings::kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        // KVM stops at the first MSR it does not know (a host without the
        // PV feature): the ones it knows are the ones a guest could use.
        if let Ok(msrs) = kvm_bindings::Msrs::from_entries(&zeros) {
            match self.fd.set_msrs(&msrs) {
                Ok(n) if n == zeros.len() => {}
                r => log::debug!("vCPU {}: PV MSRs zeroed: {r:?} of {}", self.id, zeros.len()),
            }
        }
        Ok(())
    }

    /// Runs until the VM stops, for whatever reason and from whichever
    /// thread, or until its handle is dropped; serves the commands that
    /// come through `mailbox` (see [`handle`]).
    pub fn run(
        &mut self,
        io: &Bus,
        mmio: &Bus,
        control: &VmControl,
        triple_fault: TripleFault,
        trace: Option<&BootTrace>,
        mailbox: &Mailbox,
    ) {
        KVM_RUN.with(|p| p.set(self.fd.get_kvm_run()));
        self.run_loop(io, mmio, control, triple_fault, trace, mailbox);
        KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
    }

    /// Has the VM's coalesced-I/O ring mapped (see [`coalesced`]): port
    /// writes KVM batched in the kernel are handed to the bus before every
    /// exit is handled.
    pub fn map_coalesced_ring(&mut self) -> Result<(), Error> {
        let r = self.fd.map_coalesced_mmio_ring();
        self.setup("the coalesced I/O ring", r)?;
        self.coalesced = true;
        Ok(())
    }

    /// Hands every batched write to its bus, oldest first (see
    /// [`coalesced`]).
    fn drain_coalesced(&mut self, io: &Bus, mmio: &Bus) {
        if self.coalesced {
            coalesced::drain(&mut self.fd, io, mmio);
        }
    }

    fn run_loop(
        &mut self,
        io: &Bus,
        mmio: &Bus,
        control: &VmControl,
        triple_fault: TripleFault,
        trace: Option<&BootTrace>,
        mailbox: &Mailbox,
    ) {
        // Commands sent before KVM_RUN was published to the kick handler
        // (their kick found nothing to set) are served here.
        if !self.serve_commands(mailbox, control, false) {
            return;
        }
        let mut counts = exit::ExitCounts::default();
        while !control.is_stopping() {
            let run_ptr: *const kvm_run = self.fd.get_kvm_run();
            let result = self.fd.run();
            // SAFETY: run_ptr is this vCPU's kvm_run mapping, which lives as
            // long as self.fd; the members read lie apart from the exit's
            // data that `result` refers to.
            let info = unsafe { RunInfo::read(run_ptr) };
            let raw = match translate(result, info) {
                Translated::Exit(exit) => Some(RawExit::detach(exit)),
                Translated::Kicked => {
                    // Cleared before the mailbox is read: a kick that comes
                    // after this sets it again, and its command is read.
                    self.fd.set_kvm_immediate_exit(0);
                    counts.kicked += 1;
                    None
                }
                Translated::Fatal(e) => {
                    control.stop(StopReason::HostError(format!(
                        "vCPU {}: KVM_RUN failed: {e}",
                        self.id
                    )));
                    break;
                }
            };
            self.drain_coalesced(io, mmio);
            if let Some(t) = trace {
                t.guest_exit();
            }
            let Some(raw) = raw else {
                if !self.serve_commands(mailbox, control, false) {
                    break;
                }
                continue;
            };
            // SAFETY: the pointers come from this exit's data in the kvm_run
            // mapping, alive as long as self.fd and not touched by the ring
            // drain; nothing else refers to them until the next KVM_RUN.
            let exit = unsafe { raw.attach() };
            counts.count(&exit);
            log::trace!("vCPU {}: {exit:?}", self.id);
            let action = if matches!(exit, exit::Exit::InternalError(1)) && mailbox.debugged() {
                match self.fd.get_regs() {
                    Ok(r) => Action::DebugStop(kvm_bindings::kvm_debug_exit_arch {
                        exception: handle::EMULATION_FAILURE,
                        pc: r.rip,
                        ..Default::default()
                    }),
                    Err(_) => exit::handle(exit, io, mmio, triple_fault),
                }
            } else {
                exit::handle(exit, io, mmio, triple_fault)
            };
            match action {
                Action::Continue => {}
                Action::DebugStop(arch) => {
                    if !mailbox.report(arch) {
                        control.stop(StopReason::Crash(format!(
                            "debug exit (exception {}, pc {:#x}) on vCPU {} with no debugger \
                             to report it to",
                            arch.exception, arch.pc, self.id
                        )));
                        break;
                    }
                    // Parked, as after a Pause, until resumed.
                    if !self.serve_commands(mailbox, control, true) {
                        break;
                    }
                }
                Action::Stop(StopReason::Crash(what)) => {
                    control.stop(StopReason::Crash(format!(
                        "{what} on vCPU {}\n{}\n  (on AMD hosts KVM resets a vCPU that shut down: \
                         after a triple fault these can be reset values)",
                        self.id,
                        self.dump()
                    )));
                    break;
                }
                Action::Stop(reason) => {
                    control.stop(reason);
                    break;
                }
            }
        }
        // Writes batched just before the end still reach their devices.
        self.drain_coalesced(io, mmio);
        log::debug!("vCPU {}: {counts}", self.id);
    }

    /// Serves the mailbox: the commands queued, and with `paused` (or once
    /// a Pause comes) every command until a Resume. Returns false if the
    /// vCPU must end: the VM is stopping or the handle is gone.
    fn serve_commands(&mut self, mailbox: &Mailbox, control: &VmControl, mut paused: bool) -> bool {
        loop {
            let next = if paused {
                mailbox.wait()
            } else {
                mailbox.poll()
            };
            match next {
                Next::Command(request) => {
                    let response = self.serve(&request.event, &mut paused);
                    mailbox.reply(&request, response);
                }
                Next::Nothing if !paused => return !control.is_stopping(),
                Next::Nothing => {}
                Next::Closed => return false,
            }
            if control.is_stopping() {
                return false;
            }
        }
    }

    /// One command, on this thread, out of KVM_RUN.
    fn serve(&mut self, event: &VcpuEvent, paused: &mut bool) -> VcpuResponse {
        match event {
            VcpuEvent::Pause => {
                *paused = true;
                // Tells a guest on kvmclock that it was paused (also when
                // it was parked at a debug stop already), so that its
                // watchdogs do not count the pause as a lockup. EINVAL if
                // the guest does not use kvmclock: nothing to tell.
                let _ = self.fd.kvmclock_ctrl();
                VcpuResponse::Paused
            }
            VcpuEvent::Resume => {
                *paused = false;
                VcpuResponse::Resumed
            }
            VcpuEvent::GetState => match VcpuState::read(&self.fd, self.lapic) {
                Ok(s) => VcpuResponse::State(Box::new(s)),
                Err((what, e)) => VcpuResponse::Failed(what, e),
            },
            VcpuEvent::SetState(s) => match s.write(&self.fd) {
                Ok(()) => VcpuResponse::Done,
                Err((what, e)) => VcpuResponse::Failed(what, e),
            },
            VcpuEvent::SetGuestDebug(debug) => match self.fd.set_guest_debug(debug) {
                Ok(()) => VcpuResponse::Done,
                Err(e) => VcpuResponse::Failed("KVM_SET_GUEST_DEBUG", e),
            },
            VcpuEvent::Translate(gva) => match self.fd.translate_gva(*gva) {
                Ok(t) => VcpuResponse::Translated((t.valid != 0).then_some(t.physical_address)),
                Err(e) => VcpuResponse::Failed("KVM_TRANSLATE", e),
            },
        }
    }

    /// The vCPU's registers, for a crash report.
    pub fn dump(&self) -> String {
        let (Ok(r), Ok(s)) = (self.fd.get_regs(), self.fd.get_sregs()) else {
            return "  (registers unavailable)".into();
        };
        format!(
            "  rip={:#018x} rsp={:#018x} rflags={:#010x}\n  \
             rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n  \
             rsi={:#018x} rdi={:#018x} rbp={:#018x}\n  \
             cr0={:#010x} cr2={:#018x} cr3={:#018x} cr4={:#010x} efer={:#x}\n  \
             cs={:#06x} (l={} db={}) ss={:#06x}",
            r.rip,
            r.rsp,
            r.rflags,
            r.rax,
            r.rbx,
            r.rcx,
            r.rdx,
            r.rsi,
            r.rdi,
            r.rbp,
            s.cr0,
            s.cr2,
            s.cr3,
            s.cr4,
            s.efer,
            s.cs.selector,
            s.cs.l,
            s.cs.db,
            s.ss.selector
        )
    }
}

/// Installs [`kick_handler`] for [`kick_signal`], process-wide. Without it
/// a kick would end the process (the default action of a real-time
/// signal); kvmini's run does this before any vCPU thread starts.
pub fn install_kick_handler() -> Result<(), kvm_ioctls::Error> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
}

/// The CPUID KVM supports on this host, the base every vCPU adjusts.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, kvm_ioctls::Error> {
    kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
}
