//! x86_64: memory layout, boot structures and vCPU register state.

pub mod acpi;
pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod paging;
pub mod regs;
