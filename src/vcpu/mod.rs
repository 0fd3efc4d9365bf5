//! A vCPU: its initial state and its run loop.

pub mod exit;

use std::cell::Cell;

use kvm_bindings::{kvm_run, CpuId};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

use crate::arch::x86_64::{cpuid, regs};
use crate::bus::Bus;
use crate::control::{StopReason, VmControl};
use crate::trace::BootTrace;
use exit::{Action, Exit, TripleFault};

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
}

/// An exit whose data is still in the kvm_run mapping.
enum RawExit {
    IoIn {
        port: u16,
        size: usize,
        ptr: *mut u8,
        len: usize,
    },
    IoOut {
        port: u16,
        size: usize,
        ptr: *const u8,
        len: usize,
    },
    MmioRead {
        addr: u64,
        ptr: *mut u8,
        len: usize,
    },
    MmioWrite {
        addr: u64,
        ptr: *const u8,
        len: usize,
    },
    Plain(Exit<'static>),
}

impl RawExit {
    /// # Safety
    /// The pointers must still point at `len` valid bytes that nothing else
    /// refers to for the life of the returned exit.
    unsafe fn into_exit<'a>(self) -> Exit<'a> {
        // SAFETY: guaranteed by the caller.
        unsafe {
            match self {
                RawExit::IoIn {
                    port,
                    size,
                    ptr,
                    len,
                } => Exit::IoIn {
                    port,
                    size,
                    data: std::slice::from_raw_parts_mut(ptr, len),
                },
                RawExit::IoOut {
                    port,
                    size,
                    ptr,
                    len,
                } => Exit::IoOut {
                    port,
                    size,
                    data: std::slice::from_raw_parts(ptr, len),
                },
                RawExit::MmioRead { addr, ptr, len } => Exit::MmioRead {
                    addr,
                    data: std::slice::from_raw_parts_mut(ptr, len),
                },
                RawExit::MmioWrite { addr, ptr, len } => Exit::MmioWrite {
                    addr,
                    data: std::slice::from_raw_parts(ptr, len),
                },
                RawExit::Plain(e) => e,
            }
        }
    }
}

impl Vcpu {
    pub fn new(vm: &VmFd, id: u8) -> Result<Self, Error> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|e| Error::Create(id, e))?;
        Ok(Self {
            fd,
            id,
            coalesced: false,
        })
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
    pub fn configure_lapic(&self) -> Result<(), Error> {
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
        self.setup("local APIC", self.fd.set_lapic(&lapic))
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

    /// Runs until the VM stops, for whatever reason and from whichever thread.
    pub fn run(
        &mut self,
        io: &Bus,
        mmio: &Bus,
        control: &VmControl,
        triple_fault: TripleFault,
        trace: Option<&BootTrace>,
    ) {
        KVM_RUN.with(|p| p.set(self.fd.get_kvm_run()));
        self.run_loop(io, mmio, control, triple_fault, trace);
        KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
    }

    /// Has the VM's coalesced-I/O ring mapped: port writes KVM batched in
    /// the kernel are handed to the bus before every exit is handled.
    pub fn map_coalesced_ring(&mut self) -> Result<(), Error> {
        let r = self.fd.map_coalesced_mmio_ring();
        self.setup("the coalesced I/O ring", r)?;
        self.coalesced = true;
        Ok(())
    }

    /// Hands every batched write to its bus, oldest first.
    fn drain_coalesced(&mut self, io: &Bus, mmio: &Bus) {
        if !self.coalesced {
            return;
        }
        while let Ok(Some(e)) = self.fd.coalesced_mmio_read() {
            let data = &e.data[..(e.len as usize).min(e.data.len())];
            // SAFETY: both union members are plain u32s.
            let pio = unsafe { e.__bindgen_anon_1.pio } != 0;
            let bus = if pio { io } else { mmio };
            if !bus.write(e.phys_addr, data) {
                log::debug!("unclaimed coalesced write {:#x}", e.phys_addr);
            }
        }
    }

    fn run_loop(
        &mut self,
        io: &Bus,
        mmio: &Bus,
        control: &VmControl,
        triple_fault: TripleFault,
        trace: Option<&BootTrace>,
    ) {
        while !control.is_stopping() {
            let run_ptr: *const kvm_run = self.fd.get_kvm_run();
            // The exit's data lives in the kvm_run mapping; it is kept as a
            // raw pointer so that the coalesced ring (read through self.fd)
            // can be drained before the exit is handled, in guest order.
            let raw = match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => RawExit::IoIn {
                    port,
                    // SAFETY: run_ptr is this vCPU's kvm_run mapping, which
                    // lives as long as self.fd; KVM filled its io member for
                    // this KVM_EXIT_IO exit, and only that member is read.
                    size: usize::from(unsafe { (*run_ptr).__bindgen_anon_1.io.size }),
                    ptr: data.as_mut_ptr(),
                    len: data.len(),
                },
                Ok(VcpuExit::IoOut(port, data)) => RawExit::IoOut {
                    port,
                    // SAFETY: as above.
                    size: usize::from(unsafe { (*run_ptr).__bindgen_anon_1.io.size }),
                    ptr: data.as_ptr(),
                    len: data.len(),
                },
                Ok(VcpuExit::MmioRead(addr, data)) => RawExit::MmioRead {
                    addr,
                    ptr: data.as_mut_ptr(),
                    len: data.len(),
                },
                Ok(VcpuExit::MmioWrite(addr, data)) => RawExit::MmioWrite {
                    addr,
                    ptr: data.as_ptr(),
                    len: data.len(),
                },
                Ok(VcpuExit::Hlt) => RawExit::Plain(Exit::Hlt),
                Ok(VcpuExit::Shutdown) => RawExit::Plain(Exit::Shutdown),
                Ok(VcpuExit::FailEntry(reason, _)) => RawExit::Plain(Exit::FailEntry(reason)),
                Ok(VcpuExit::InternalError) => RawExit::Plain(Exit::InternalError(
                    // SAFETY: as above, for the internal member of this exit.
                    unsafe { (*run_ptr).__bindgen_anon_1.internal.suberror },
                )),
                Ok(VcpuExit::SystemEvent(kind, _)) => RawExit::Plain(Exit::SystemEvent(kind)),
                Ok(VcpuExit::Intr) => RawExit::Plain(Exit::Interrupted),
                Ok(other) => RawExit::Plain(Exit::Other(exit_name(&other))),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    // A kick: let the next KVM_RUN run, unless stopping.
                    self.fd.set_kvm_immediate_exit(0);
                    RawExit::Plain(Exit::Interrupted)
                }
                Err(e) => {
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
            // SAFETY: the pointers come from this exit's data in the kvm_run
            // mapping, alive as long as self.fd and not touched by the ring
            // drain; nothing else refers to them until the next KVM_RUN.
            let exit = unsafe { raw.into_exit() };
            match exit::handle(exit, io, mmio, triple_fault) {
                Action::Continue => {}
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

fn exit_name(exit: &VcpuExit) -> &'static str {
    match exit {
        VcpuExit::Unknown => "KVM_EXIT_UNKNOWN",
        VcpuExit::Exception => "KVM_EXIT_EXCEPTION",
        VcpuExit::Debug(_) => "KVM_EXIT_DEBUG",
        VcpuExit::IrqWindowOpen => "KVM_EXIT_IRQ_WINDOW_OPEN",
        VcpuExit::Nmi => "KVM_EXIT_NMI",
        VcpuExit::X86Rdmsr(_) => "KVM_EXIT_X86_RDMSR",
        VcpuExit::X86Wrmsr(_) => "KVM_EXIT_X86_WRMSR",
        _ => "an unhandled KVM exit",
    }
}

/// The CPUID KVM supports on this host, the base every vCPU adjusts.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, kvm_ioctls::Error> {
    kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
}
