//! What the guest learns from its boot protocol: RAM size and command line.

use core::ptr;

/// `kind` values passed by boot.S to `kvmini_main`.
#[allow(dead_code)] // documents boot.S's `xorl %esi, %esi`; any non-PVH kind is Linux
pub const BOOT_KIND_LINUX: u64 = 0;
pub const BOOT_KIND_PVH: u64 = 1;

// Linux struct boot_params (the "zero page"), see Documentation/arch/x86/zero-page.rst.
const BP_EXT_CMD_LINE_PTR: u64 = 0x0c8; // u32, high 32 bits of cmd_line_ptr
const BP_E820_ENTRIES: u64 = 0x1e8; // u8
const BP_CMD_LINE_PTR: u64 = 0x228; // u32, in the setup header
const BP_E820_TABLE: u64 = 0x2d0; // struct boot_e820_entry[128], 20 bytes each
const E820_ENTRY_SIZE: u64 = 20; // addr u64, size u64, type u32
const BP_E820_MAX: u64 = 128;

// Xen/PVH struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h).
const HVM_START_MAGIC: u32 = 0x336e_c578;
const SI_MAGIC: u64 = 0; // u32
const SI_VERSION: u64 = 4; // u32
const SI_CMDLINE_PADDR: u64 = 24; // u64
const SI_MEMMAP_PADDR: u64 = 40; // u64, version >= 1
const SI_MEMMAP_ENTRIES: u64 = 48; // u32, version >= 1
const MEMMAP_ENTRY_SIZE: u64 = 24; // addr u64, size u64, type u32, reserved u32
const MEMMAP_MAX: u64 = 1024; // sanity bound

/// e820 / PVH memmap type for usable RAM.
const TYPE_RAM: u32 = 1;
/// Longest command line we will scan for its NUL terminator.
const CMDLINE_MAX: usize = 64 * 1024;

pub struct BootInfo {
    /// Sum of the sizes of all RAM (type 1) entries, in bytes.
    pub ram_bytes: u64,
    /// The command line, without its NUL terminator (empty if none).
    pub cmdline: &'static [u8],
}

/// Read a `T` at guest-physical address `addr` (identity-mapped).
///
/// # Safety
/// `addr` must be non-zero and point at `size_of::<T>()` readable bytes.
unsafe fn rd<T: Copy>(addr: u64) -> T {
    // SAFETY: per this function's contract; unaligned reads are fine on x86.
    unsafe { ptr::read_unaligned(addr as *const T) }
}

/// # Safety
/// `addr` must be 0 or point at a NUL-terminated string in identity-mapped
/// memory that nobody writes while the guest runs.
unsafe fn c_string(addr: u64) -> &'static [u8] {
    if addr == 0 {
        return &[];
    }
    let p = addr as *const u8;
    let mut len = 0;
    // SAFETY: bytes up to and including the NUL are readable (contract).
    while len < CMDLINE_MAX && unsafe { *p.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: the `len` bytes just scanned are readable and never written.
    unsafe { core::slice::from_raw_parts(p, len) }
}

impl BootInfo {
    /// # Safety
    /// `addr` is what boot.S got from the VMM: 0 or the address of a
    /// `struct boot_params` (kind 0) or `struct hvm_start_info` (kind 1)
    /// in identity-mapped memory, as the boot protocols promise.
    pub unsafe fn read(addr: u64, kind: u64) -> Self {
        let empty = Self {
            ram_bytes: 0,
            cmdline: &[],
        };
        if addr == 0 {
            return empty;
        }
        // SAFETY: (both arms) the structure layouts are the documented ABI,
        // and the pointers inside them come from the VMM (contract).
        unsafe {
            if kind == BOOT_KIND_PVH {
                if rd::<u32>(addr + SI_MAGIC) != HVM_START_MAGIC {
                    return empty;
                }
                let mut ram = 0;
                if rd::<u32>(addr + SI_VERSION) >= 1 {
                    let map: u64 = rd(addr + SI_MEMMAP_PADDR);
                    let n = core::cmp::min(rd::<u32>(addr + SI_MEMMAP_ENTRIES) as u64, MEMMAP_MAX);
                    if map != 0 {
                        ram = sum_ram(map, n, MEMMAP_ENTRY_SIZE);
                    }
                }
                Self {
                    ram_bytes: ram,
                    cmdline: c_string(rd(addr + SI_CMDLINE_PADDR)),
                }
            } else {
                let n = core::cmp::min(rd::<u8>(addr + BP_E820_ENTRIES) as u64, BP_E820_MAX);
                let ram = sum_ram(addr + BP_E820_TABLE, n, E820_ENTRY_SIZE);
                let cmd = rd::<u32>(addr + BP_CMD_LINE_PTR) as u64
                    | (rd::<u32>(addr + BP_EXT_CMD_LINE_PTR) as u64) << 32;
                Self {
                    ram_bytes: ram,
                    cmdline: c_string(cmd),
                }
            }
        }
    }
}

/// Sum the sizes of the type-1 entries of a table of `n` entries of
/// `stride` bytes (addr u64, size u64, type u32, ...) at `table`.
///
/// # Safety
/// `table` must point at `n * stride` readable bytes.
unsafe fn sum_ram(table: u64, n: u64, stride: u64) -> u64 {
    let mut sum: u64 = 0;
    for i in 0..n {
        let e = table + i * stride;
        // SAFETY: entry i lies within the table (contract).
        let (size, ty) = unsafe { (rd::<u64>(e + 8), rd::<u32>(e + 16)) };
        if ty == TYPE_RAM {
            sum = sum.wrapping_add(size);
        }
    }
    sum
}
