//! Every guest-physical address and I/O port kvmini uses, in one place.
//!
//! Guest-physical memory map (x86_64):
//!
//! ```text
//! 0x0000_0000  real-mode IVT / BIOS data (left zero)
//! 0x0000_0500  boot GDT (4 entries), IDT right after it
//! 0x0000_7000  boot_params ("zero page") of the Linux boot protocol
//! 0x0000_8ff0  initial stack pointer for the 64-bit entry
//! 0x0000_9000  PML4, then PDPT at 0xa000, then four page directories at
//!              0xb000..0xf000: identity map of 0..4 GiB with 2 MiB pages
//! 0x0002_0000  kernel command line (NUL-terminated)
//! 0x0009_fc00  EBDA (reserved in e820)
//! 0x000e_0000  ACPI tables (RSDP first, so legacy scanners find it)
//! 0x0010_0000  kernel load address (1 MiB, "himem")
//!   ...        RAM up to min(--memory, 3 GiB)
//! 0xc000_0000  32-bit device hole: MMIO devices from 0xd000_0000 (4 KiB
//!              windows, handed out by the device manager), IOAPIC
//!              0xfec0_0000, LAPIC 0xfee0_0000
//! 0x1_0000_0000  RAM above 3 GiB continues here
//! ```

/// Start of the boot GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// Start of the (empty) boot IDT.
pub const BOOT_IDT_START: u64 = 0x520;
/// The Linux zero page (struct boot_params).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer handed to a 64-bit entry point.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Top-level page table (PML4).
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First of the page directories (one per GiB identity-mapped).
pub const PDE_START: u64 = 0xb000;
/// How many GiB the boot page tables identity-map.
pub const IDENTITY_MAP_GIB: u64 = 4;
/// The PVH start_info structure, for kernels entered through their PVH note.
pub const PVH_INFO_START: u64 = 0x6000;
/// The PVH memory map, right after start_info.
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line accepted, including its terminating NUL (Linux's
/// COMMAND_LINE_SIZE on x86). A bzImage may declare a smaller limit.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// End of conventional ("low") memory below the EBDA.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables, starting with the RSDP.
pub const ACPI_START: u64 = 0xe0000;
/// Where the kernel is loaded (1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit device hole; RAM beyond this moves above 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit device hole.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Where the device manager places MMIO devices, one window each.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
/// Size of the MMIO device range (it ends well below the IOAPIC).
pub const MMIO_DEVICES_SIZE: u64 = 0x1000_0000;
/// One MMIO device's window (a virtio-mmio register file needs 0x200).
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// IOAPIC base (in-kernel irqchip).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC base.
pub const APIC_START: u64 = 0xfee0_0000;
/// Smallest guest RAM accepted.
pub const MIN_MEMORY: u64 = 16 << 20;

/// COM1 16550 UART base port.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1 interrupt line.
pub const COM1_IRQ: u32 = 4;
/// COM2 16550 UART base port.
pub const COM2_PORT: u16 = 0x2f8;
/// COM2 interrupt line.
pub const COM2_IRQ: u32 = 3;
/// Number of registers of a 16550.
pub const UART_PORT_COUNT: u16 = 8;
/// i8042 data port (0x60); the command port is 0x64, at offset 4.
pub const I8042_PORT: u16 = 0x60;
/// i8042 ports claimed: 0x60..=0x64 (0x61 belongs to the in-kernel PIT).
pub const I8042_PORT_COUNT: u16 = 5;
/// Debug-exit port (QEMU isa-debug-exit's conventional address).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Its ports (0xf4..=0xf7: an `outl` lands whole, as with QEMU's iosize=4).
pub const DEBUG_EXIT_PORT_COUNT: u16 = 4;
/// QEMU's fw_cfg: selector (16 bits) at 0x510, data (bytes) at 0x511.
pub const FW_CFG_PORT: u16 = 0x510;
pub const FW_CFG_PORT_COUNT: u16 = 2;
/// ACPI PM1a event block (status + enable), 4 bytes.
pub const PM1A_EVT_PORT: u16 = 0x600;
/// ACPI PM1a control block, 2 bytes: SLP_TYP and SLP_EN.
pub const PM1A_CNT_PORT: u16 = 0x604;
/// ACPI reset register (FADT RESET_REG), 1 byte.
pub const ACPI_RESET_PORT: u16 = 0x608;
/// ACPI PM timer (FADT PM_TMR_BLK), 4 bytes, 32 bits at 3.579545 MHz.
pub const PM_TMR_PORT: u16 = 0x60c;
/// Ports kvmini reserves for its ACPI PM block.
pub const ACPI_PORT_COUNT: u16 = 0x10;
/// Value written to the reset register to reset.
pub const ACPI_RESET_VALUE: u8 = 0xfe;
/// POST / boot-marker port.
pub const POST_PORT: u16 = 0x80;
