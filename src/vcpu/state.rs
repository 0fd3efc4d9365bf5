//! A vCPU's architectural state as KVM hands it out: what GetState reads
//! and SetState writes (see [`super::handle`]), for the gdb stub and
//! snapshots.

use kvm_bindings::{
    kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, Msrs,
};
use kvm_ioctls::VcpuFd;

/// The MSRs a [`VcpuState`] holds: the ones kvmini sets at boot
/// (arch::x86_64::regs::boot_msrs) and the PAT. EFER and the APIC base are
/// in the special registers.
pub const STATE_MSRS: &[u32] = &[
    0x174,       // IA32_SYSENTER_CS
    0x175,       // IA32_SYSENTER_ESP
    0x176,       // IA32_SYSENTER_EIP
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SYSCALL_MASK (FMASK)
    0xc000_0102, // KERNEL_GS_BASE
    0x10,        // IA32_TSC
    0x1a0,       // IA32_MISC_ENABLE
    0x2ff,       // MTRR_DEF_TYPE
    0x277,       // IA32_PAT
];

/// One vCPU's registers, read or written while it is out of KVM_RUN.
#[derive(Debug, Clone, PartialEq)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: kvm_fpu,
    pub debugregs: kvm_debugregs,
    /// The local APIC; None without the in-kernel irqchip.
    pub lapic: Option<kvm_lapic_state>,
    /// [`STATE_MSRS`], in that order.
    pub msrs: Vec<kvm_msr_entry>,
    /// Running, halted, or (an AP before its SIPI) waiting for INIT.
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub events: kvm_vcpu_events,
}

/// What failed, and which KVM call it was.
pub type Failure = (&'static str, kvm_ioctls::Error);

fn at<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, Failure> {
    r.map_err(|e| (what, e))
}

impl VcpuState {
    /// Reads the state of `fd`; `lapic` says whether it has an in-kernel
    /// local APIC.
    pub fn read(fd: &VcpuFd, lapic: bool) -> Result<Self, Failure> {
        let entries: Vec<kvm_msr_entry> = STATE_MSRS
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|_| ("KVM_GET_MSRS", kvm_ioctls::Error::new(libc::E2BIG)))?;
        let read = at("KVM_GET_MSRS", fd.get_msrs(&mut msrs))?;
        if read != STATE_MSRS.len() {
            // KVM stops at the first MSR it cannot read.
            let index = STATE_MSRS.get(read).copied().unwrap_or_default();
            log::debug!("KVM_GET_MSRS stopped at MSR {index:#x}");
            return Err(("KVM_GET_MSRS", kvm_ioctls::Error::new(libc::EINVAL)));
        }
        Ok(Self {
            regs: at("KVM_GET_REGS", fd.get_regs())?,
            sregs: at("KVM_GET_SREGS", fd.get_sregs())?,
            fpu: at("KVM_GET_FPU", fd.get_fpu())?,
            debugregs: at("KVM_GET_DEBUGREGS", fd.get_debug_regs())?,
            lapic: if lapic {
                Some(at("KVM_GET_LAPIC", fd.get_lapic())?)
            } else {
                None
            },
            msrs: msrs.as_slice().to_vec(),
            mp_state: at("KVM_GET_MP_STATE", fd.get_mp_state())?,
            events: at("KVM_GET_VCPU_EVENTS", fd.get_vcpu_events())?,
        })
    }

    /// Writes this state into `fd`: special registers first (the APIC base
    /// and the mode the others are read in), then the rest, the local APIC
    /// before the run state (KVM checks an AP's state against its APIC),
    /// pending events last.
    pub fn write(&self, fd: &VcpuFd) -> Result<(), Failure> {
        at("KVM_SET_SREGS", fd.set_sregs(&self.sregs))?;
        at("KVM_SET_REGS", fd.set_regs(&self.regs))?;
        at("KVM_SET_FPU", fd.set_fpu(&self.fpu))?;
        let msrs = Msrs::from_entries(&self.msrs)
            .map_err(|_| ("KVM_SET_MSRS", kvm_ioctls::Error::new(libc::E2BIG)))?;
        let written = at("KVM_SET_MSRS", fd.set_msrs(&msrs))?;
        if written != self.msrs.len() {
            return Err(("KVM_SET_MSRS", kvm_ioctls::Error::new(libc::EINVAL)));
        }
        at("KVM_SET_DEBUGREGS", fd.set_debug_regs(&self.debugregs))?;
        if let Some(lapic) = &self.lapic {
            at("KVM_SET_LAPIC", fd.set_lapic(lapic))?;
        }
        at("KVM_SET_MP_STATE", fd.set_mp_state(self.mp_state))?;
        at("KVM_SET_VCPU_EVENTS", fd.set_vcpu_events(&self.events))
    }
}
