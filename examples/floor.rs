//! The floor: the least a process must do to run guest code on KVM.
//!
//! Opens /dev/kvm, creates a VM and one vCPU, maps one page of guest
//! memory holding `out 0xf4, al` in real mode, runs to the first exit and
//! exits. scripts/bench times it like kvmini and QEMU, so docs/benchmarks.md
//! can say how close kvmini comes to what the kernel allows.
//!
//! `--irqchip` also creates the in-kernel irqchip, and `--pit` the irqchip
//! and the PIT (what kvmini creates for Linux), to split the cost between
//! the bare VM and those devices. `--memory-mib N` maps N MiB of guest RAM
//! from address 0 instead of one page (as a VM of that size needs).
//!
//! Exit status: 0 when the first exit was the expected port write, 1 for
//! anything else (with a line on stderr).

use std::process::ExitCode;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Guest-physical address of the code (and the only page of memory).
const CODE: u64 = 0x1000;
/// `mov al, 0; out 0xf4, al` (the debug-exit port, as the tiny guest uses).
const PROGRAM: [u8; 4] = [0xb0, 0x00, 0xe6, 0xf4];
const PORT: u16 = 0xf4;

fn run(irqchip: bool, pit: bool, memory_mib: usize) -> Result<(), String> {
    let kvm = Kvm::new().map_err(|e| format!("open /dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    // One page at CODE, or the guest's whole RAM from 0 (vm-memory maps it
    // MAP_NORESERVE, as kvmini does, so only touched pages cost anything).
    let range = if memory_mib == 0 {
        (GuestAddress(CODE), 0x1000)
    } else {
        (GuestAddress(0), memory_mib << 20)
    };
    let mem = GuestMemoryMmap::<()>::from_ranges(&[range]).map_err(|e| format!("mmap: {e}"))?;
    mem.write_slice(&PROGRAM, GuestAddress(CODE))
        .map_err(|e| format!("write program: {e}"))?;
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives
        // the VM (both are dropped at the end of this function, VM first
        // because it is never used after the run).
        unsafe { vm.set_user_memory_region(r) }.map_err(|e| format!("memory slot: {e}"))?;
    }
    if irqchip || pit {
        vm.create_irq_chip()
            .map_err(|e| format!("KVM_CREATE_IRQCHIP: {e}"))?;
    }
    if pit {
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit)
            .map_err(|e| format!("KVM_CREATE_PIT2: {e}"))?;
    }
    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    // Real mode after reset; only CS and RIP need to point at the code.
    let mut sregs = vcpu.get_sregs().map_err(|e| format!("get sregs: {e}"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("set sregs: {e}"))?;
    let mut regs = vcpu.get_regs().map_err(|e| format!("get regs: {e}"))?;
    regs.rip = CODE;
    regs.rflags = 0x2;
    vcpu.set_regs(&regs).map_err(|e| format!("set regs: {e}"))?;
    match vcpu.run().map_err(|e| format!("KVM_RUN: {e}"))? {
        VcpuExit::IoOut(PORT, [0]) => Ok(()),
        other => Err(format!("unexpected first exit: {other:?}")),
    }
}

fn main() -> ExitCode {
    let mut irqchip = false;
    let mut pit = false;
    let mut memory_mib = 0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--irqchip" => irqchip = true,
            "--pit" => pit = true,
            "--memory-mib" => match args.next().and_then(|v| v.parse().ok()) {
                Some(m) if m > 0 && m <= 1 << 20 => memory_mib = m,
                _ => {
                    eprintln!("floor: --memory-mib takes a number of MiB from 1 to 1048576");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("usage: floor [--irqchip] [--pit] [--memory-mib N]");
                return ExitCode::from(2);
            }
        }
    }
    match run(irqchip, pit, memory_mib) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor: {e}");
            ExitCode::FAILURE
        }
    }
}
