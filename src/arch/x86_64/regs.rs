//! Initial vCPU register state for the two entry conventions kvmini boots:
//! the Linux 64-bit boot protocol (long mode, paging on, rsi = zero page)
//! and PVH (32-bit protected mode, paging off, rbx = start_info).

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs, Msrs};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::gdt;
use super::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, ZERO_PAGE_START};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_MP: u64 = 1 << 1;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_NE: u64 = 1 << 5;
const X86_CR0_WP: u64 = 1 << 16;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const X86_CR4_OSFXSR: u64 = 1 << 9;
const X86_CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRRs enabled, default type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Linux 64-bit boot protocol at this address.
    Linux64(u64),
    /// PVH 32-bit entry at this address, start_info at the second.
    Pvh { entry: u64, start_info: u64 },
    /// Multiboot: 32-bit protected mode, paging off, at `entry`, with
    /// EAX = 0x2BADB002 and EBX = the multiboot information at `info`.
    Multiboot { entry: u64, info: u64 },
}

/// General-purpose registers at entry.
pub fn regs(entry: Entry) -> kvm_regs {
    match entry {
        Entry::Linux64(rip) => kvm_regs {
            rflags: 0x2,
            rip,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_START,
            ..Default::default()
        },
        Entry::Pvh { entry, start_info } => kvm_regs {
            rflags: 0x2,
            rip: entry,
            rbx: start_info,
            ..Default::default()
        },
        Entry::Multiboot { entry, info } => kvm_regs {
            rflags: 0x2,
            rip: entry,
            rax: u64::from(crate::loader::multiboot::BOOTLOADER_MAGIC),
            rbx: info,
            ..Default::default()
        },
    }
}

/// Legacy FPU and SSE control state as after FNINIT / reset.
pub fn fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// The MSRs Linux expects initialised at entry.
pub fn boot_msrs() -> Result<Msrs, vmm_sys_util::fam::Error> {
    let entries = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .map(|(index, data)| kvm_bindings::kvm_msr_entry {
        index,
        data,
        ..Default::default()
    });
    Msrs::from_entries(&entries)
}

/// Writes the boot GDT and an empty IDT into guest memory.
pub fn write_gdt<M: GuestMemory>(mem: &M) -> Result<(), vm_memory::GuestMemoryError> {
    let table = gdt::boot_gdt();
    for (i, e) in table.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + i as u64 * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
}

/// Special registers at entry, starting from the vCPU's current ones.
pub fn sregs(mut sregs: kvm_sregs, entry: Entry, cr3: u64) -> kvm_sregs {
    let table = gdt::boot_gdt();
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    let data = gdt::segment(&table, gdt::DATA);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::segment(&table, gdt::TSS);
    match entry {
        Entry::Linux64(_) => {
            sregs.cs = gdt::segment(&table, gdt::CODE64);
            sregs.cr3 = cr3;
            sregs.cr4 = X86_CR4_PAE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT;
            sregs.cr0 = X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE | X86_CR0_WP | X86_CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        // Both: CS a flat 32-bit code segment, the others flat data,
        // protected mode without paging, as the PVH ABI and the multiboot
        // specification (3.2, "Machine state") require.
        Entry::Pvh { .. } | Entry::Multiboot { .. } => {
            sregs.cs = gdt::segment(&table, gdt::CODE32);
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux64_enters_long_mode_with_zero_page_in_rsi() {
        let r = regs(Entry::Linux64(0x100_0000));
        assert_eq!((r.rip, r.rsi, r.rflags), (0x100_0000, ZERO_PAGE_START, 2));
        let s = sregs(kvm_sregs::default(), Entry::Linux64(0), 0x9000);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.efer & EFER_LMA, 0);
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.cr3, 0x9000);
    }

    #[test]
    fn pvh_enters_protected_mode_without_paging() {
        let e = Entry::Pvh {
            entry: 0x10_0040,
            start_info: 0x6000,
        };
        let r = regs(e);
        assert_eq!((r.rip, r.rbx), (0x10_0040, 0x6000));
        let s = sregs(kvm_sregs::default(), e, 0x9000);
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.efer, 0);
        assert_eq!((s.cs.l, s.cs.db), (0, 1));
    }

    #[test]
    fn multiboot_enters_protected_mode_with_the_magic_in_eax() {
        let e = Entry::Multiboot {
            entry: 0x10_0040,
            info: 0x3_0000,
        };
        let r = regs(e);
        assert_eq!((r.rip, r.rax, r.rbx), (0x10_0040, 0x2bad_b002, 0x3_0000));
        let s = sregs(kvm_sregs::default(), e, 0x9000);
        assert_eq!(s.cr0 & (X86_CR0_PG | X86_CR0_PE), X86_CR0_PE);
        assert_eq!(s.efer, 0);
        assert_eq!(
            (s.cs.l, s.cs.db, s.cs.base, s.cs.limit),
            (0, 1, 0, 0xffff_ffff)
        );
        assert_eq!((s.ds.base, s.ds.limit, s.ss.db), (0, 0xffff_ffff, 1));
    }

    #[test]
    fn boot_msrs_enable_fast_strings() {
        let m = boot_msrs().unwrap();
        let e = m
            .as_slice()
            .iter()
            .find(|e| e.index == MSR_IA32_MISC_ENABLE)
            .unwrap();
        assert_eq!(e.data, MISC_ENABLE_FAST_STRING);
    }
}
