//! What the guest learns from its boot protocol: RAM size and command line,
//! and for multiboot the whole information structure.

use core::ptr;

/// `kind` values passed by boot.S to `kvmini_main`.
#[allow(dead_code)] // documents boot.S's `xorl %esi, %esi`; any non-PVH kind is Linux
pub const BOOT_KIND_LINUX: u64 = 0;
pub const BOOT_KIND_PVH: u64 = 1;
pub const BOOT_KIND_MULTIBOOT: u64 = 2;
/// The multiboot entry, but EAX did not hold 0x2BADB002.
pub const BOOT_KIND_MULTIBOOT_BAD_MAGIC: u64 = 3;

// The multiboot information structure (Multiboot 0.6.96, 3.3).
const MB_FLAGS: u64 = 0; // u32
const MB_MEM_LOWER: u64 = 4; // u32, KiB; flag bit 0
const MB_MEM_UPPER: u64 = 8; // u32, KiB
const MB_CMDLINE: u64 = 16; // u32; flag bit 2
const MB_MODS_COUNT: u64 = 20; // u32; flag bit 3
const MB_MODS_ADDR: u64 = 24; // u32
const MB_MMAP_LENGTH: u64 = 44; // u32; flag bit 6
const MB_MMAP_ADDR: u64 = 48; // u32
const MB_LOADER_NAME: u64 = 64; // u32; flag bit 9
const MB_INFO_MEMORY: u32 = 1 << 0;
const MB_INFO_CMDLINE: u32 = 1 << 2;
const MB_INFO_MODS: u32 = 1 << 3;
const MB_INFO_MMAP: u32 = 1 << 6;
const MB_INFO_LOADER_NAME: u32 = 1 << 9;
/// Sanity bounds on what the loader hands over.
const MB_MODS_MAX: u32 = 64;
const MB_MMAP_MAX_BYTES: u32 = 64 * 1024;

/// A multiboot module as the information structure lists it.
#[derive(Clone, Copy)]
pub struct MbModule {
    pub start: u32,
    pub end: u32,
    pub string: &'static [u8],
}

/// What a multiboot boot loader said, beyond RAM size and command line.
#[derive(Clone, Copy)]
pub struct Multiboot {
    /// EAX held 0x2BADB002.
    pub magic_ok: bool,
    pub flags: u32,
    pub mem_lower: u32,
    pub mem_upper: u32,
    pub mmap_entries: u32,
    pub mods_addr: u32,
    pub mods_count: u32,
    pub loader: &'static [u8],
}

impl Multiboot {
    /// Module `i` (below `mods_count`).
    pub fn module(&self, i: u32) -> MbModule {
        let e = u64::from(self.mods_addr) + u64::from(i) * 16;
        // SAFETY: the loader's module list holds mods_count 16-byte entries
        // (mod_start, mod_end, string, reserved) in identity-mapped memory.
        unsafe {
            MbModule {
                start: rd(e),
                end: rd(e + 4),
                string: c_string(u64::from(rd::<u32>(e + 8))),
            }
        }
    }
}

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
    /// Booted through the multiboot entry: what the loader said.
    pub multiboot: Option<Multiboot>,
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
            multiboot: None,
        };
        if addr == 0 {
            return empty;
        }
        // SAFETY: (both arms) the structure layouts are the documented ABI,
        // and the pointers inside them come from the VMM (contract).
        unsafe {
            if kind == BOOT_KIND_MULTIBOOT || kind == BOOT_KIND_MULTIBOOT_BAD_MAGIC {
                return read_multiboot(addr, kind == BOOT_KIND_MULTIBOOT);
            }
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
                    multiboot: None,
                }
            } else {
                let n = core::cmp::min(rd::<u8>(addr + BP_E820_ENTRIES) as u64, BP_E820_MAX);
                let ram = sum_ram(addr + BP_E820_TABLE, n, E820_ENTRY_SIZE);
                let cmd = rd::<u32>(addr + BP_CMD_LINE_PTR) as u64
                    | (rd::<u32>(addr + BP_EXT_CMD_LINE_PTR) as u64) << 32;
                Self {
                    ram_bytes: ram,
                    cmdline: c_string(cmd),
                    multiboot: None,
                }
            }
        }
    }
}

/// The multiboot information at `addr`.
///
/// # Safety
/// `addr` is the information structure's address a multiboot loader gave
/// in EBX, in identity-mapped memory; the addresses in it are its own.
unsafe fn read_multiboot(addr: u64, magic_ok: bool) -> BootInfo {
    // SAFETY: the fields are the specification's layout (contract).
    unsafe {
        let flags: u32 = rd(addr + MB_FLAGS);
        let has = |bit: u32| flags & bit != 0;
        let (mut ram, mut entries) = (0u64, 0u32);
        if has(MB_INFO_MMAP) {
            let base = u64::from(rd::<u32>(addr + MB_MMAP_ADDR));
            let len = u64::from(rd::<u32>(addr + MB_MMAP_LENGTH).min(MB_MMAP_MAX_BYTES));
            let mut at = base;
            // Entry: size (not counting itself), base u64, length u64, type.
            while at + 24 <= base + len {
                let size = u64::from(rd::<u32>(at));
                if rd::<u32>(at + 20) == TYPE_RAM {
                    ram = ram.wrapping_add(rd(at + 12));
                }
                entries += 1;
                at += size.max(20) + 4;
            }
        }
        BootInfo {
            ram_bytes: ram,
            cmdline: if has(MB_INFO_CMDLINE) {
                c_string(u64::from(rd::<u32>(addr + MB_CMDLINE)))
            } else {
                &[]
            },
            multiboot: Some(Multiboot {
                magic_ok,
                flags,
                mem_lower: if has(MB_INFO_MEMORY) { rd(addr + MB_MEM_LOWER) } else { 0 },
                mem_upper: if has(MB_INFO_MEMORY) { rd(addr + MB_MEM_UPPER) } else { 0 },
                mmap_entries: entries,
                mods_addr: if has(MB_INFO_MODS) { rd(addr + MB_MODS_ADDR) } else { 0 },
                mods_count: if has(MB_INFO_MODS) {
                    rd::<u32>(addr + MB_MODS_COUNT).min(MB_MODS_MAX)
                } else {
                    0
                },
                loader: if has(MB_INFO_LOADER_NAME) {
                    c_string(u64::from(rd::<u32>(addr + MB_LOADER_NAME)))
                } else {
                    &[]
                },
            }),
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
