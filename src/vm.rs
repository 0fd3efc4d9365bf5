//! The VM file descriptor: memory slots, the in-kernel irqchip and PIT,
//! and irqfds.

use kvm_bindings::{
    kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

/// Where KVM may put the TSS it needs for real-mode emulation on Intel:
/// three pages just below the BIOS area at the top of the 32-bit space.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Errors setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create the VM")]
    Create(#[source] kvm_ioctls::Error),
    #[error("cannot set the TSS address")]
    Tss(#[source] kvm_ioctls::Error),
    #[error("cannot register guest memory with KVM")]
    MemorySlot(#[source] kvm_ioctls::Error),
    #[error("cannot create the in-kernel interrupt controller")]
    Irqchip(#[source] kvm_ioctls::Error),
    #[error("cannot create the in-kernel PIT")]
    Pit(#[source] kvm_ioctls::Error),
    #[error("cannot batch port writes")]
    Coalesce(#[source] kvm_ioctls::Error),
    #[error("cannot register a notification eventfd")]
    Ioeventfd(#[source] kvm_ioctls::Error),
    #[error("cannot connect IRQ {1} to its eventfd")]
    Irqfd(#[source] kvm_ioctls::Error, u32),
    #[error("cannot {0} the state of the in-kernel interrupt controllers and PIT")]
    ChipState(&'static str, #[source] kvm_ioctls::Error),
}

/// The in-kernel PICs, IOAPIC and PIT as they were created.
struct ChipState {
    chips: Vec<kvm_irqchip>,
    pit: kvm_pit_state2,
}

pub struct Vm {
    fd: VmFd,
    irqchip: bool,
    /// What [`Vm::reset`] restores (see [`Vm::save_reset_state`]).
    reset_state: Option<ChipState>,
}

impl Vm {
    /// Creates the VM with `mem` as its physical memory and, if `irqchip`,
    /// the in-kernel interrupt controllers and PIT (KVM wants those before
    /// any vCPU). Memory is registered first: once an irqchip exists, each
    /// memory slot change waits for an SRCU grace period (Firecracker's
    /// order, for the same reason).
    pub fn new(kvm: &Kvm, mem: &GuestMemoryMmap, irqchip: bool) -> Result<Self, Error> {
        let fd = kvm.create_vm().map_err(Error::Create)?;
        fd.set_tss_address(KVM_TSS_ADDRESS).map_err(Error::Tss)?;
        let vm = Self {
            fd,
            irqchip,
            reset_state: None,
        };
        vm.add_memory(mem)?;
        if irqchip {
            vm.fd.create_irq_chip().map_err(Error::Irqchip)?;
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            vm.fd.create_pit2(pit).map_err(Error::Pit)?;
        }
        Ok(vm)
    }

    /// Keeps the in-kernel interrupt controllers' and PIT's state as it is
    /// now, right after their creation, for [`Vm::reset`] (nothing to keep
    /// without the irqchip).
    pub fn save_reset_state(&mut self) -> Result<(), Error> {
        if !self.irqchip {
            return Ok(());
        }
        let mut chips = Vec::new();
        for id in [
            KVM_IRQCHIP_PIC_MASTER,
            KVM_IRQCHIP_PIC_SLAVE,
            KVM_IRQCHIP_IOAPIC,
        ] {
            let mut chip = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut chip)
                .map_err(|e| Error::ChipState("read", e))?;
            chips.push(chip);
        }
        let pit = self
            .fd
            .get_pit2()
            .map_err(|e| Error::ChipState("read", e))?;
        self.reset_state = Some(ChipState { chips, pit });
        Ok(())
    }

    /// The machine's reset line for the interrupt controllers and the PIT:
    /// back to the state [`Vm::save_reset_state`] kept, so that no
    /// interrupt, mask or timer of one boot reaches the next. Only while
    /// every vCPU is out of KVM_RUN.
    pub fn reset(&self) -> Result<(), Error> {
        let Some(state) = &self.reset_state else {
            return Ok(());
        };
        for chip in &state.chips {
            self.fd
                .set_irqchip(chip)
                .map_err(|e| Error::ChipState("restore", e))?;
        }
        self.fd
            .set_pit2(&state.pit)
            .map_err(|e| Error::ChipState("restore", e))
    }

    /// Gives the guest `mem` as its physical memory, one slot per region.
    fn add_memory(&self, mem: &GuestMemoryMmap) -> Result<(), Error> {
        for (slot, region) in mem.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which the
            // Vmm keeps alive for as long as this VM exists.
            unsafe { self.fd.set_user_memory_region(r) }.map_err(Error::MemorySlot)?;
        }
        Ok(())
    }

    /// Raises `irq` whenever `evt` is written (a no-op without an irqchip,
    /// where nothing could receive the interrupt).
    pub fn register_irqfd(&self, evt: &EventFd, irq: u32) -> Result<(), Error> {
        if !self.irqchip {
            return Ok(());
        }
        self.fd
            .register_irqfd(evt, irq)
            .map_err(|e| Error::Irqfd(e, irq))
    }

    /// Signals `evt` in the kernel when the guest writes the 4-byte value
    /// `datamatch` to MMIO address `addr` (no exit to kvmini).
    pub fn register_ioeventfd(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), Error> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(Error::Ioeventfd)
    }

    /// Lets KVM batch writes to `port` (see [`crate::vcpu::coalesced`]).
    pub fn coalesce_port_writes(&self, port: u16) -> Result<(), Error> {
        crate::vcpu::coalesced::batch_port_writes(&self.fd, port).map_err(Error::Coalesce)
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }
}
