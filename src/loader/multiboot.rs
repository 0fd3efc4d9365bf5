//! Multiboot (version 1, specification 0.6.96) kernels: the header that
//! marks one, the image loaded into guest memory, and the multiboot
//! information structure (MBI) handed to it in EBX.
//!
//! Header: magic 0x1BADB002, 4-byte aligned, wholly within the image's
//! first 8192 bytes, magic + flags + checksum == 0 (mod 2^32). Flag bits
//! 0-15 are requirements: kvmini honours bit 0 (page-aligned modules) and
//! bit 1 (memory information), accepts bit 2 (a video mode) without a
//! framebuffer, and refuses any other. Bit 16 (the "a.out kludge") says the
//! header's own address fields place the image; without it the image is an
//! ELF32 (EM_386) or ELF64 (EM_X86_64) loaded by its PT_LOAD program
//! headers at their physical addresses, as GRUB does.
//!
//! Every field comes from an untrusted file: sums are checked, counts
//! bounded, a failed read is a refusal and never a panic, and nothing is
//! written to guest memory until the whole image has passed. What is
//! loaded lies in guest RAM clear of what kvmini writes below 1 MiB (its
//! GDT, the MBI, the ACPI tables; see [`LOW_RESERVED`]) and below the
//! 32-bit device hole (a multiboot kernel
//! starts in 32-bit protected mode without paging, so it can reach nothing
//! higher), and the entry point lies in bytes loaded from the file.

use std::io::{Read, Seek, SeekFrom};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::layout::{EBDA_START, HIMEM_START, MMIO_GAP_START};
use crate::memory::{E820Entry, E820_RAM};

use super::validate::{u16_at, u32_at, u64_at};

/// The value a multiboot kernel finds in EAX at entry.
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// The multiboot header's first word.
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// The header lies wholly within this many bytes from the file's start.
pub const SEARCH_LEN: usize = 8192;

/// Header flag: modules must be page (4 KiB) aligned.
pub const FLAG_PAGE_ALIGN: u32 = 1 << 0;
/// Header flag: the MBI must carry mem_lower/mem_upper (and the map).
pub const FLAG_MEMORY_INFO: u32 = 1 << 1;
/// Header flag: the kernel asks for a video mode (header fields 32-47).
pub const FLAG_VIDEO_MODE: u32 = 1 << 2;
/// Header flag: fields 12-31 place the image (the a.out kludge).
pub const FLAG_AOUT_KLUDGE: u32 = 1 << 16;
/// Flag bits 0-15 are requirements: a loader that cannot meet one must
/// refuse the kernel.
const REQUIRED_MASK: u32 = 0xffff;
/// The requirement bits kvmini meets (bit 2 only in part: see
/// [`check_flags`]).
const SUPPORTED_REQUIRED: u32 = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO | FLAG_VIDEO_MODE;

/// What a multiboot kernel's segments may not overlap, below 1 MiB: what
/// kvmini writes there for it after loading it (the boot GDT and IDT in
/// page 0, the MBI, the ACPI tables) and what is not RAM (the EBDA, the
/// VGA hole, the BIOS area). The rest of low memory is the kernel's: a
/// test kernel linked at 32 KiB (kvm-unit-tests' realmode) loads there,
/// and kvmini writes neither page tables nor the Linux boot data for a
/// multiboot kernel.
pub const LOW_RESERVED: [(u64, u64, &str); 3] = [
    (
        0,
        0x1000,
        "page 0 (the real-mode IVT, and kvmini's boot GDT and IDT at 0x500)",
    ),
    (
        MBI_START,
        MBI_START + MBI_SIZE,
        "0x30000-0x40000, where kvmini writes the multiboot information",
    ),
    (
        EBDA_START,
        HIMEM_START,
        "0x9fc00-0x100000 (the EBDA, the VGA hole and the BIOS area with kvmini's ACPI tables)",
    ),
];

/// Where [`write_info`] puts the MBI and everything it points to:
/// 0x30000..0x40000. Free in layout.rs's map: above the boot GDT/IDT
/// (0x500), the PVH start_info (0x6000), zero page (0x7000), boot stack
/// (below 0x8ff0), page tables (0x9000..0xf000) and the command line
/// (0x20000, at most 2048 bytes), and below the EBDA (0x9fc00) and ACPI
/// tables (0xe0000); also clear of page 0, where kvm-unit-tests puts its
/// IDT and AP trampoline. The test `mbi_region_is_free_in_the_layout`
/// checks it against layout.rs.
pub const MBI_START: u64 = 0x3_0000;
/// Size of the MBI region: the MBI, the memory map, the module list and
/// every string must fit in it.
pub const MBI_SIZE: u64 = 0x1_0000;

/// MBI flag: mem_lower and mem_upper are valid.
pub const INFO_MEMORY: u32 = 1 << 0;
/// MBI flag: cmdline is valid.
pub const INFO_CMDLINE: u32 = 1 << 2;
/// MBI flag: mods_count and mods_addr are valid.
pub const INFO_MODS: u32 = 1 << 3;
/// MBI flag: mmap_length and mmap_addr are valid.
pub const INFO_MMAP: u32 = 1 << 6;
/// MBI flag: boot_loader_name is valid.
pub const INFO_BOOT_LOADER_NAME: u32 = 1 << 9;
/// The name the MBI gives the boot loader.
pub const BOOT_LOADER_NAME: &[u8] = b"kvmini";

/// Bytes of the MBI as specification 0.6.96 lays it out, through the
/// framebuffer fields (which kvmini leaves zero).
const MBI_LEN: usize = 116;
/// One memory map entry: its size field (which does not count itself),
/// base_addr, length, type.
const MMAP_ENTRY_LEN: usize = 24;
const MMAP_ENTRY_SIZE_FIELD: u32 = 20;
/// One module list entry: mod_start, mod_end, string, reserved.
const MOD_ENTRY_LEN: usize = 16;

const PAGE_SIZE: u64 = 0x1000;
/// Lower memory the MBI reports at most (the specification's maximum).
const MAX_LOWER_KIB: u64 = 640;

/// A multiboot header found in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub flags: u32,
    /// File offset of the header (a multiple of 4, below [`SEARCH_LEN`]).
    pub offset: usize,
    /// The a.out kludge's addresses, present exactly when flag bit 16 is.
    pub addrs: Option<AoutAddrs>,
}

/// Header fields 12-31, valid when flag bit 16 is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AoutAddrs {
    /// Physical address the header itself is loaded at.
    pub header_addr: u32,
    /// Physical address of the first byte loaded.
    pub load_addr: u32,
    /// Physical end of the bytes loaded from the file; 0: to the file's end.
    pub load_end_addr: u32,
    /// Physical end of the zeroed bss after them; 0: no bss.
    pub bss_end_addr: u32,
    /// Physical entry point.
    pub entry_addr: u32,
}

/// Finds the first valid multiboot header in `head` (the image's first
/// bytes; only the first [`SEARCH_LEN`] are searched). Valid: at a 4-byte
/// aligned offset, the checksum right, and, with flag bit 16, its address
/// fields (bytes 12-31) also inside the searched bytes. A candidate that
/// fails any of these is skipped and the search goes on.
pub fn find_header(head: &[u8]) -> Option<Header> {
    let head = &head[..head.len().min(SEARCH_LEN)];
    (0..head.len())
        .step_by(4)
        .take_while(|&at| at + 12 <= head.len())
        .find_map(|at| {
            if u32_at(head, at) != HEADER_MAGIC {
                return None;
            }
            let flags = u32_at(head, at + 4);
            let checksum = u32_at(head, at + 8);
            if HEADER_MAGIC.wrapping_add(flags).wrapping_add(checksum) != 0 {
                return None;
            }
            let addrs = if flags & FLAG_AOUT_KLUDGE != 0 {
                if at + 32 > head.len() {
                    return None;
                }
                Some(AoutAddrs {
                    header_addr: u32_at(head, at + 12),
                    load_addr: u32_at(head, at + 16),
                    load_end_addr: u32_at(head, at + 20),
                    bss_end_addr: u32_at(head, at + 24),
                    entry_addr: u32_at(head, at + 28),
                })
            } else {
                None
            };
            Some(Header {
                flags,
                offset: at,
                addrs,
            })
        })
}

/// Whether `head` (an image's first bytes) carries a multiboot header.
pub fn is_multiboot(head: &[u8]) -> bool {
    find_header(head).is_some()
}

/// Refuses header flags that require what kvmini does not provide (bits
/// 0-15 other than 0, 1 and 2). Bit 2 (a video mode) is accepted, as QEMU
/// accepts it: the MBI then carries no VBE or framebuffer information
/// (flags 11 and 12 clear), and kvmini emulates no display at all;
/// [`MultibootKernel::video_requested`] lets the caller say so.
pub fn check_flags(flags: u32) -> Result<(), String> {
    let unsupported = flags & REQUIRED_MASK & !SUPPORTED_REQUIRED;
    if unsupported != 0 {
        return Err(format!(
            "its multiboot header requires features kvmini does not know (flag bits \
             {unsupported:#06x}; of bits 0-15 it provides only 0, 1 and 2)"
        ));
    }
    Ok(())
}

/// A multiboot kernel in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultibootKernel {
    /// The 32-bit entry point (physical), inside bytes loaded from the file.
    pub entry: u32,
    /// The lowest address loaded (outside [`LOW_RESERVED`]).
    pub start: u64,
    /// First byte after the image, bss included (at most the device hole's
    /// start, and within guest RAM).
    pub end: u64,
    /// The kernel asks for page-aligned modules (flag bit 0);
    /// [`module_address`] always aligns them.
    pub page_align_modules: bool,
    /// The kernel asks for a video mode (flag bit 2), which kvmini does not
    /// set: there is no framebuffer.
    pub video_requested: bool,
}

/// One range of the image: `filesz` bytes from the file at `offset`, then
/// zeros up to `memsz`, at physical address `paddr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    offset: u64,
    paddr: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
}

/// What to load, and where to enter.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    segments: Vec<Segment>,
    entry: u64,
    /// What the segments are called in refusals: "segment" (ELF program
    /// headers, numbered) or the a.out kludge's range.
    kind: PlanKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlanKind {
    Elf,
    Aout,
}

impl PlanKind {
    fn name(self, i: usize) -> String {
        match self {
            PlanKind::Elf => format!("segment {i}"),
            PlanKind::Aout => "the a.out kludge's load range".to_string(),
        }
    }
}

/// The a.out kludge's segment: from file offset `header.offset` minus
/// (header_addr minus load_addr), load_end_addr minus load_addr bytes (or
/// all to the file's end), then zeros up to bss_end_addr.
fn plan_aout(header: &Header, a: &AoutAddrs, file_len: u64) -> Result<Plan, String> {
    if a.header_addr < a.load_addr {
        return Err(format!(
            "its multiboot header_addr {:#x} is below its load_addr {:#x} (the header \
             must be loaded with the image)",
            a.header_addr, a.load_addr
        ));
    }
    let before_header = u64::from(a.header_addr - a.load_addr);
    let offset = (header.offset as u64)
        .checked_sub(before_header)
        .ok_or_else(|| {
            format!(
                "its multiboot header_addr - load_addr is {before_header:#x}, more than the \
                 header's offset {:#x} in the file: the load would start before the file",
                header.offset
            )
        })?;
    let filesz = if a.load_end_addr == 0 {
        file_len.saturating_sub(offset)
    } else if a.load_end_addr < a.load_addr {
        return Err(format!(
            "its multiboot load_end_addr {:#x} is below its load_addr {:#x}",
            a.load_end_addr, a.load_addr
        ));
    } else {
        u64::from(a.load_end_addr - a.load_addr)
    };
    let load_end = u64::from(a.load_addr) + filesz;
    let memsz = if a.bss_end_addr == 0 {
        filesz
    } else if u64::from(a.bss_end_addr) < load_end {
        return Err(format!(
            "its multiboot bss_end_addr {:#x} is below the end of what it loads, {load_end:#x}",
            a.bss_end_addr
        ));
    } else {
        u64::from(a.bss_end_addr) - u64::from(a.load_addr)
    };
    Ok(Plan {
        segments: vec![Segment {
            offset,
            paddr: u64::from(a.load_addr),
            vaddr: u64::from(a.load_addr),
            filesz,
            memsz,
        }],
        entry: u64::from(a.entry_addr),
        kind: PlanKind::Aout,
    })
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
/// More program headers than any kernel has; beyond it the image is
/// refused rather than read.
const MAX_PROGRAM_HEADERS: u16 = 256;

/// Reads `buf.len()` bytes at `offset`; false if the file ends first.
fn read_at<R: Read + Seek>(image: &mut R, offset: u64, buf: &mut [u8]) -> bool {
    image
        .seek(SeekFrom::Start(offset))
        .and_then(|_| image.read_exact(buf))
        .is_ok()
}

/// An ELF32 or ELF64 image's PT_LOAD segments with bytes in memory, and its
/// entry translated, as GRUB does, from e_entry (a virtual address)
/// through the segment whose virtual range holds it to a physical one.
fn plan_elf<R: Read + Seek>(image: &mut R) -> Result<Plan, String> {
    let mut ehdr = [0u8; 64];
    if !read_at(image, 0, &mut ehdr[..4]) || &ehdr[..4] != ELF_MAGIC {
        return Err(
            "its multiboot header lacks flag bit 16 (load addresses) and the image \
                    is not an ELF: kvmini cannot tell where to load it"
                .into(),
        );
    }
    if !read_at(image, 0, &mut ehdr[..20]) {
        return Err("the ELF header is cut short".into());
    }
    if ehdr[5] != ELFDATA2LSB {
        return Err("a big-endian ELF; multiboot kernels are little-endian x86".into());
    }
    let class = ehdr[4];
    let machine = u16_at(&ehdr, 18);
    // The ELF header's and one program header's size, by class.
    let (ehdr_len, phdr_len) = match (class, machine) {
        (ELFCLASS32, EM_386) => (52, 32u64),
        (ELFCLASS64, EM_X86_64) => (64, 56u64),
        (ELFCLASS32, m) => {
            return Err(format!(
                "an ELF32 for e_machine {m}; a multiboot ELF32 is x86 (EM_386, 3)"
            ))
        }
        (ELFCLASS64, m) => {
            return Err(format!(
                "an ELF64 for e_machine {m}; a multiboot ELF64 is x86_64 (EM_X86_64, 62)"
            ))
        }
        (c, _) => return Err(format!("an ELF of unknown class {c}")),
    };
    if !read_at(image, 0, &mut ehdr[..ehdr_len]) {
        return Err("the ELF header is cut short".into());
    }
    let (entry, phoff, phentsize, phnum) = if class == ELFCLASS32 {
        (
            u64::from(u32_at(&ehdr, 0x18)),
            u64::from(u32_at(&ehdr, 0x1c)),
            u64::from(u16_at(&ehdr, 0x2a)),
            u16_at(&ehdr, 0x2c),
        )
    } else {
        (
            u64_at(&ehdr, 0x18),
            u64_at(&ehdr, 0x20),
            u64::from(u16_at(&ehdr, 0x36)),
            u16_at(&ehdr, 0x38),
        )
    };
    if phnum == 0 {
        return Err("it has no program headers: nothing to load".into());
    }
    if phnum > MAX_PROGRAM_HEADERS {
        return Err(format!(
            "it has {phnum} program headers (at most {MAX_PROGRAM_HEADERS})"
        ));
    }
    if phentsize < phdr_len {
        return Err(format!(
            "its program headers are {phentsize} bytes each, less than the {phdr_len} of its \
             ELF class"
        ));
    }
    let mut segments = Vec::new();
    let mut ph = [0u8; 56];
    for i in 0..u64::from(phnum) {
        let at = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .ok_or_else(|| format!("program header {i} lies beyond any file"))?;
        if !read_at(image, at, &mut ph[..phdr_len as usize]) {
            return Err(format!(
                "program header {i} lies beyond the end of the file"
            ));
        }
        if u32_at(&ph, 0) != PT_LOAD {
            continue;
        }
        let s = if class == ELFCLASS32 {
            Segment {
                offset: u64::from(u32_at(&ph, 4)),
                vaddr: u64::from(u32_at(&ph, 8)),
                paddr: u64::from(u32_at(&ph, 12)),
                filesz: u64::from(u32_at(&ph, 16)),
                memsz: u64::from(u32_at(&ph, 20)),
            }
        } else {
            Segment {
                offset: u64_at(&ph, 8),
                vaddr: u64_at(&ph, 0x10),
                paddr: u64_at(&ph, 0x18),
                filesz: u64_at(&ph, 0x20),
                memsz: u64_at(&ph, 0x28),
            }
        };
        // A segment with nothing in memory loads nothing, whatever it
        // says of the file.
        if s.memsz > 0 {
            segments.push(s);
        }
    }
    if segments.is_empty() {
        return Err("it has no loadable segment (PT_LOAD with a size)".into());
    }
    let entry = segments
        .iter()
        .find(|s| entry >= s.vaddr && entry - s.vaddr < s.memsz)
        .map(|s| s.paddr.wrapping_add(entry - s.vaddr))
        .ok_or_else(|| format!("the entry point {entry:#x} lies in no segment"))?;
    Ok(Plan {
        segments,
        entry,
        kind: PlanKind::Elf,
    })
}

/// The end of guest RAM that runs contiguously from `addr`, or `addr`
/// itself when no RAM is there.
fn ram_end_from(mem: &GuestMemoryMmap, addr: u64) -> u64 {
    let mut end = addr;
    // Each step moves `end` to a later region's end: at most one step per
    // region.
    for _ in 0..mem.num_regions() {
        match mem.find_region(GuestAddress(end)) {
            Some(r) => end = r.start_addr().0 + r.len(),
            None => break,
        }
    }
    end
}

/// Checks a plan against the file and the layout; returns the range the
/// image occupies in memory.
fn check_plan(plan: &Plan, file_len: u64, ram_end: u64) -> Result<(u64, u64), String> {
    let mut start = u64::MAX;
    let mut end = 0u64;
    for (i, s) in plan.segments.iter().enumerate() {
        let name = plan.kind.name(i);
        if s.filesz > s.memsz {
            return Err(format!(
                "{name} has {} bytes in the file but only {} in memory",
                s.filesz, s.memsz
            ));
        }
        if s.offset.checked_add(s.filesz).is_none_or(|e| e > file_len) {
            return Err(format!(
                "{name} needs file bytes {:#x}+{:#x}, beyond the file's {file_len} bytes \
                 (a truncated image?)",
                s.offset, s.filesz
            ));
        }
        let Some(seg_end) = s.paddr.checked_add(s.memsz) else {
            return Err(format!(
                "{name} at {:#x} wraps around the address space",
                s.paddr
            ));
        };
        if let Some((_, _, what)) = LOW_RESERVED
            .iter()
            .find(|(lo, hi, _)| s.paddr < *hi && *lo < seg_end)
        {
            return Err(format!(
                "{name} at {:#x}-{seg_end:#x} overlaps {what}",
                s.paddr
            ));
        }
        if seg_end > MMIO_GAP_START {
            return Err(format!(
                "{name} at {:#x}-{seg_end:#x} reaches past {MMIO_GAP_START:#x}, the start of \
                 the 32-bit device hole (a multiboot kernel starts in 32-bit mode without \
                 paging: everything it loads must lie below it)",
                s.paddr
            ));
        }
        if seg_end > ram_end {
            return Err(format!(
                "{name} at {:#x}-{seg_end:#x} lies beyond the guest's RAM, which ends at \
                 {ram_end:#x} (raise --memory)",
                s.paddr
            ));
        }
        start = start.min(s.paddr);
        end = end.max(seg_end);
    }
    for (i, s) in plan.segments.iter().enumerate() {
        for (j, t) in plan.segments.iter().enumerate().skip(i + 1) {
            // Both ends were checked above not to wrap.
            if s.paddr < t.paddr + t.memsz && t.paddr < s.paddr + s.memsz {
                return Err(format!("segments {i} and {j} overlap in memory"));
            }
        }
    }
    let entry = plan.entry;
    if !plan
        .segments
        .iter()
        .any(|s| entry >= s.paddr && entry - s.paddr < s.filesz)
    {
        return Err(format!(
            "the entry point {entry:#x} lies outside every byte loaded from the file"
        ));
    }
    Ok((start, end))
}

/// Bytes copied (or zeroed) per guest memory write.
const CHUNK: usize = 1 << 20;

/// Copies `s` from the file into guest memory and zeroes its bss.
fn copy_segment<R: Read + Seek>(
    mem: &GuestMemoryMmap,
    image: &mut R,
    s: &Segment,
    name: &str,
    buf: &mut [u8],
) -> Result<(), String> {
    let write_err = |at: u64| format!("cannot write {name} into guest memory at {at:#x}");
    image
        .seek(SeekFrom::Start(s.offset))
        .map_err(|e| format!("cannot seek to {name} in the file: {e}"))?;
    let mut done = 0u64;
    while done < s.filesz {
        let n = (s.filesz - done).min(buf.len() as u64) as usize;
        image.read_exact(&mut buf[..n]).map_err(|_| {
            format!("the file ends inside {name} (did it change while being loaded?)")
        })?;
        let at = s.paddr + done;
        mem.write_slice(&buf[..n], GuestAddress(at))
            .map_err(|_| write_err(at))?;
        done += n as u64;
    }
    buf.fill(0);
    while done < s.memsz {
        let n = (s.memsz - done).min(buf.len() as u64) as usize;
        let at = s.paddr + done;
        mem.write_slice(&buf[..n], GuestAddress(at))
            .map_err(|_| write_err(at))?;
        done += n as u64;
    }
    Ok(())
}

/// Loads the multiboot kernel `image`, whose header is `header`, into
/// guest memory: by the header's addresses with flag bit 16, otherwise by
/// its ELF program headers. Refuses (with the rule broken) flags kvmini
/// cannot honour and images that do not fit the layout before writing
/// anything; only a file that shrinks while it is copied can leave part of
/// an image behind (and is refused too). The bss, and every segment's
/// memory beyond its file bytes, is zeroed.
pub fn load<F: Read + Seek>(
    mem: &GuestMemoryMmap,
    header: &Header,
    image: &mut F,
) -> Result<MultibootKernel, String> {
    check_flags(header.flags)?;
    let file_len = image
        .seek(SeekFrom::End(0))
        .map_err(|e| format!("cannot find the file's size: {e}"))?;
    let plan = match (&header.addrs, header.flags & FLAG_AOUT_KLUDGE != 0) {
        (Some(a), true) => plan_aout(header, a, file_len)?,
        (None, false) => plan_elf(image)?,
        _ => return Err("its header's flag bit 16 and address fields disagree".into()),
    };
    let (start, end) = check_plan(&plan, file_len, ram_end_from(mem, HIMEM_START))?;
    let mut buf = vec![0u8; CHUNK];
    for (i, s) in plan.segments.iter().enumerate() {
        copy_segment(mem, image, s, &plan.kind.name(i), &mut buf)?;
    }
    // check_plan put the entry inside a segment below MMIO_GAP_START.
    let entry = u32::try_from(plan.entry).map_err(|_| "the entry point is above 4 GiB")?;
    Ok(MultibootKernel {
        entry,
        start,
        end,
        page_align_modules: header.flags & FLAG_PAGE_ALIGN != 0,
        video_requested: header.flags & FLAG_VIDEO_MODE != 0,
    })
}

/// Where a module of `len` bytes goes: at the first page boundary at or
/// after `after` (the kernel's end, or the previous module's) and at or
/// above 1 MiB, ending at or below `limit` and the device hole's start
/// (so that its addresses fit the MBI's 32-bit fields). Always
/// page-aligned: harmless for kernels that did not ask (flag bit 0).
pub fn module_address(after: u64, len: u64, limit: u64) -> Option<u64> {
    let start = after.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1);
    let start = start.max(HIMEM_START);
    let end = start.checked_add(len)?;
    (end <= limit.min(MMIO_GAP_START)).then_some(start)
}

/// A module already in guest memory, for the MBI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Module<'a> {
    pub start: u32,
    /// First byte after the module.
    pub end: u32,
    /// Its string (no NUL in it; the MBI adds one).
    pub cmdline: &'a [u8],
}

/// What the MBI tells the kernel.
#[derive(Debug, Clone, Copy)]
pub struct InfoInput<'a> {
    /// The guest's memory map; mem_lower and mem_upper are derived from it,
    /// so the three agree.
    pub e820: &'a [E820Entry],
    /// The kernel command line (no NUL in it; the MBI adds one).
    pub cmdline: &'a [u8],
    pub modules: &'a [Module<'a>],
}

/// KiB of RAM in `e820` running contiguously (across adjacent or
/// overlapping RAM entries, in any order) from `from`.
fn contiguous_ram_kib(e820: &[E820Entry], from: u64) -> u64 {
    let mut end = from;
    // Each step moves `end` past another entry: at most one per entry.
    for _ in 0..e820.len() {
        let next = e820
            .iter()
            .filter(|e| e.kind == E820_RAM && e.addr <= end)
            .map(|e| e.addr.saturating_add(e.size))
            .filter(|&e| e > end)
            .max();
        match next {
            Some(e) => end = e,
            None => break,
        }
    }
    (end - from) / 1024
}

/// Appends `s` and a NUL to `buf`; returns the string's guest address.
fn push_string(buf: &mut Vec<u8>, base: u64, s: &[u8], what: &str) -> Result<u32, String> {
    if s.contains(&0) {
        return Err(format!("{what} contains a NUL byte"));
    }
    let addr = base + buf.len() as u64;
    buf.extend_from_slice(s);
    buf.push(0);
    u32::try_from(addr).map_err(|_| format!("{what} would lie above 4 GiB"))
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Writes the MBI and all it points to into [`MBI_START`]..+[`MBI_SIZE`];
/// returns the MBI's address, for EBX. Flags: memory (mem_lower: RAM from
/// 0, at most 640 KiB; mem_upper: RAM from 1 MiB up to the first hole),
/// command line (always, empty if there is none: some kernels read it
/// without looking at the flag), modules (when there are any), memory map
/// (the e820 entries, in order) and boot loader name. Refuses, writing
/// nothing, what does not fit.
pub fn write_info(mem: &GuestMemoryMmap, input: &InfoInput) -> Result<u32, String> {
    write_info_in(mem, input, MBI_START, MBI_SIZE)
}

fn write_info_in(
    mem: &GuestMemoryMmap,
    input: &InfoInput,
    base: u64,
    size: u64,
) -> Result<u32, String> {
    let fits_32 = base.checked_add(size).is_some_and(|e| e <= 1 << 32);
    let region_ok = usize::try_from(size).is_ok_and(|n| mem.check_range(GuestAddress(base), n));
    if !fits_32 || !region_ok {
        return Err(format!(
            "the multiboot information region {base:#x}+{size:#x} is not guest RAM below 4 GiB"
        ));
    }
    // Layout: the MBI, the memory map (8-aligned), the module list, then
    // the strings.
    let mut buf = vec![0u8; MBI_LEN.next_multiple_of(8)];
    let mut flags = INFO_MEMORY | INFO_CMDLINE | INFO_MMAP | INFO_BOOT_LOADER_NAME;
    let mem_lower = contiguous_ram_kib(input.e820, 0).min(MAX_LOWER_KIB);
    let mem_upper = contiguous_ram_kib(input.e820, HIMEM_START);
    put_u32(&mut buf, 4, mem_lower as u32);
    put_u32(&mut buf, 8, u32::try_from(mem_upper).unwrap_or(u32::MAX));

    let mmap_addr = base + buf.len() as u64;
    for e in input.e820 {
        buf.extend_from_slice(&MMAP_ENTRY_SIZE_FIELD.to_le_bytes());
        buf.extend_from_slice(&e.addr.to_le_bytes());
        buf.extend_from_slice(&e.size.to_le_bytes());
        buf.extend_from_slice(&e.kind.to_le_bytes());
    }
    let mmap_len = input.e820.len() * MMAP_ENTRY_LEN;
    put_u32(&mut buf, 44, u32::try_from(mmap_len).unwrap_or(u32::MAX));
    put_u32(&mut buf, 48, mmap_addr as u32);

    let mods_at = buf.len();
    buf.resize(mods_at + input.modules.len() * MOD_ENTRY_LEN, 0);
    let cmdline = push_string(&mut buf, base, input.cmdline, "the command line")?;
    put_u32(&mut buf, 16, cmdline);
    for (i, m) in input.modules.iter().enumerate() {
        if m.end < m.start {
            return Err(format!(
                "module {i} ends at {:#x}, before its start {:#x}",
                m.end, m.start
            ));
        }
        let string = push_string(&mut buf, base, m.cmdline, &format!("module {i}'s string"))?;
        let at = mods_at + i * MOD_ENTRY_LEN;
        put_u32(&mut buf, at, m.start);
        put_u32(&mut buf, at + 4, m.end);
        put_u32(&mut buf, at + 8, string);
    }
    if !input.modules.is_empty() {
        flags |= INFO_MODS;
        put_u32(
            &mut buf,
            20,
            u32::try_from(input.modules.len()).unwrap_or(u32::MAX),
        );
        put_u32(&mut buf, 24, (base + mods_at as u64) as u32);
    }
    let name = push_string(&mut buf, base, BOOT_LOADER_NAME, "the boot loader name")?;
    put_u32(&mut buf, 64, name);
    put_u32(&mut buf, 0, flags);

    if buf.len() as u64 > size {
        return Err(format!(
            "the multiboot information (command line, {} modules' strings, {} memory map \
             entries) takes {} bytes, which does not fit in the {size} bytes at {base:#x}",
            input.modules.len(),
            input.e820.len(),
            buf.len()
        ));
    }
    mem.write_slice(&buf, GuestAddress(base))
        .map_err(|_| format!("cannot write the multiboot information at {base:#x}"))?;
    // fits_32 holds: base is below 4 GiB.
    Ok(base as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout::{
        ACPI_START, BOOT_GDT_START, CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, IDENTITY_MAP_GIB,
        PDE_START, PML4_START, PVH_INFO_START, ZERO_PAGE_START,
    };
    use crate::memory::e820_map;
    use std::io::Cursor;

    const MB: u64 = 1 << 20;
    const RAM: u64 = 32 * MB;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn r32(mem: &GuestMemoryMmap, addr: u64) -> u32 {
        mem.read_obj(GuestAddress(addr)).unwrap()
    }

    fn r64(mem: &GuestMemoryMmap, addr: u64) -> u64 {
        mem.read_obj(GuestAddress(addr)).unwrap()
    }

    fn cstr(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let mut s = Vec::new();
        let mut at = addr;
        loop {
            let b: u8 = mem.read_obj(GuestAddress(at)).unwrap();
            if b == 0 {
                return s;
            }
            s.push(b);
            at += 1;
        }
    }

    /// A multiboot header: magic, flags, checksum and, with bit 16, the
    /// five address fields.
    fn mb_header(flags: u32, addrs: Option<[u32; 5]>) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(
            &0u32
                .wrapping_sub(HEADER_MAGIC.wrapping_add(flags))
                .to_le_bytes(),
        );
        for a in addrs.into_iter().flatten() {
            h.extend_from_slice(&a.to_le_bytes());
        }
        h
    }

    fn put(file: &mut Vec<u8>, at: usize, bytes: &[u8]) {
        if file.len() < at + bytes.len() {
            file.resize(at + bytes.len(), 0);
        }
        file[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// (offset, vaddr, paddr, filesz, memsz) of a PT_LOAD.
    type Ph = (u64, u64, u64, u64, u64);

    /// An ELF32 (EM_386) with `phs` at 52 and a multiboot header (flags 0)
    /// at 0x100; segment bytes are filled with a pattern by `fill`.
    fn elf32(entry: u32, phs: &[Ph]) -> Vec<u8> {
        let mut f = vec![0u8; 0x200];
        f[..4].copy_from_slice(ELF_MAGIC);
        f[4] = ELFCLASS32;
        f[5] = ELFDATA2LSB;
        f[6] = 1;
        put(&mut f, 16, &2u16.to_le_bytes());
        put(&mut f, 18, &EM_386.to_le_bytes());
        put(&mut f, 0x18, &entry.to_le_bytes());
        put(&mut f, 0x1c, &52u32.to_le_bytes());
        put(&mut f, 0x2a, &32u16.to_le_bytes());
        put(&mut f, 0x2c, &(phs.len() as u16).to_le_bytes());
        for (i, &(off, va, pa, fsz, msz)) in phs.iter().enumerate() {
            let at = 52 + 32 * i;
            put(&mut f, at, &PT_LOAD.to_le_bytes());
            for (k, v) in [off, va, pa, fsz, msz].into_iter().enumerate() {
                put(&mut f, at + 4 + 4 * k, &(v as u32).to_le_bytes());
            }
        }
        put(&mut f, 0x1c0, &mb_header(0, None));
        fill(&mut f, phs);
        f
    }

    /// The same as an ELF64 (EM_X86_64).
    fn elf64(entry: u64, phs: &[Ph]) -> Vec<u8> {
        let mut f = vec![0u8; 0x200];
        f[..4].copy_from_slice(ELF_MAGIC);
        f[4] = ELFCLASS64;
        f[5] = ELFDATA2LSB;
        f[6] = 1;
        put(&mut f, 16, &2u16.to_le_bytes());
        put(&mut f, 18, &EM_X86_64.to_le_bytes());
        put(&mut f, 0x18, &entry.to_le_bytes());
        put(&mut f, 0x20, &64u64.to_le_bytes());
        put(&mut f, 0x36, &56u16.to_le_bytes());
        put(&mut f, 0x38, &(phs.len() as u16).to_le_bytes());
        for (i, &(off, va, pa, fsz, msz)) in phs.iter().enumerate() {
            let at = 64 + 56 * i;
            put(&mut f, at, &PT_LOAD.to_le_bytes());
            for (k, v) in [off, va, pa, fsz, msz].into_iter().enumerate() {
                put(&mut f, at + 8 + 8 * k, &v.to_le_bytes());
            }
        }
        put(&mut f, 0x1c0, &mb_header(0, None));
        fill(&mut f, phs);
        f
    }

    /// The byte at file offset `o`: a pattern that differs from page to
    /// page and is never zero.
    fn pat(o: u64) -> u8 {
        (o % 251 + (o >> 12) % 3 + 1) as u8
    }

    /// Fills each segment's file bytes with [`pat`] (the file grows to hold
    /// them, up to 1 MiB: bigger ones are there to be refused).
    fn fill(f: &mut Vec<u8>, phs: &[Ph]) {
        for &(off, _, _, fsz, _) in phs {
            if off + fsz <= MB {
                let bytes: Vec<u8> = (off..off + fsz).map(pat).collect();
                put(f, off as usize, &bytes);
            }
        }
    }

    fn load_bytes(mem: &GuestMemoryMmap, file: &[u8]) -> Result<MultibootKernel, String> {
        let h = find_header(file).expect("a multiboot header");
        load(mem, &h, &mut Cursor::new(file))
    }

    fn refused(file: &[u8], needle: &str) {
        let m = mem();
        let e = load_bytes(&m, file).unwrap_err();
        assert!(e.contains(needle), "expected {needle:?} in: {e}");
        // A refusal writes nothing.
        assert!(
            read(&m, MB, (RAM - MB) as usize).iter().all(|&b| b == 0),
            "a refused image wrote to guest memory ({e})"
        );
    }

    fn pattern(off: u64, len: u64) -> Vec<u8> {
        (off..off + len).map(pat).collect()
    }

    #[test]
    fn finds_the_header_aligned_with_its_checksum() {
        let mut f = vec![0u8; 0x3000];
        put(&mut f, 0x1234, &mb_header(3, None));
        let h = find_header(&f).unwrap();
        assert_eq!((h.flags, h.offset, h.addrs), (3, 0x1234, None));
        assert!(is_multiboot(&f));
        // At offset 0 too.
        assert_eq!(find_header(&mb_header(0, None)).unwrap().offset, 0);
        // The a.out addresses come with bit 16.
        let a = [0x10_0010, 0x10_0000, 0x10_2000, 0x10_3000, 0x10_0020];
        let h = find_header(&mb_header(FLAG_AOUT_KLUDGE, Some(a))).unwrap();
        assert_eq!(
            h.addrs,
            Some(AoutAddrs {
                header_addr: a[0],
                load_addr: a[1],
                load_end_addr: a[2],
                bss_end_addr: a[3],
                entry_addr: a[4],
            })
        );
    }

    #[test]
    fn rejects_bad_headers() {
        // Misaligned.
        let mut f = vec![0u8; 0x100];
        put(&mut f, 0x42, &mb_header(0, None));
        assert!(find_header(&f).is_none());
        // A bad checksum.
        let mut h = mb_header(0, None);
        h[8] ^= 1;
        assert!(find_header(&h).is_none());
        // The last aligned place that holds a whole header is found; one
        // that ends past 8 KiB is not.
        let mut f = vec![0u8; 0x4000];
        put(&mut f, SEARCH_LEN - 12, &mb_header(0, None));
        assert_eq!(find_header(&f).unwrap().offset, SEARCH_LEN - 12);
        let mut f = vec![0u8; 0x4000];
        put(&mut f, SEARCH_LEN - 8, &mb_header(0, None));
        assert!(find_header(&f).is_none());
        put(&mut f, SEARCH_LEN, &mb_header(0, None));
        assert!(find_header(&f).is_none());
        assert!(!is_multiboot(&f));
        // Bit 16 with its address fields cut off by the file's end.
        let h = mb_header(FLAG_AOUT_KLUDGE, Some([0; 5]));
        assert!(find_header(&h[..28]).is_none());
        assert!(find_header(&[]).is_none());
        // A bad candidate is skipped, a later good one found.
        let mut f = vec![0u8; 0x100];
        let mut bad = mb_header(0, None);
        bad[8] ^= 1;
        put(&mut f, 0, &bad);
        put(&mut f, 0x40, &mb_header(2, None));
        assert_eq!(find_header(&f).unwrap().offset, 0x40);
    }

    #[test]
    fn flags_requirements() {
        assert_eq!(check_flags(0), Ok(()));
        assert_eq!(check_flags(0b111 | FLAG_AOUT_KLUDGE | 1 << 31), Ok(()));
        for bit in 3..16 {
            let e = check_flags(1 << bit).unwrap_err();
            assert!(e.contains(&format!("{:#06x}", 1 << bit)), "{e}");
        }
        // load refuses them too.
        let mut f = elf32(0x10_0000, &[(0x1000, MB, MB, 0x100, 0x100)]);
        put(&mut f, 0x1c0, &mb_header(1 << 3, None));
        refused(&f, "requires features");
    }

    #[test]
    fn elf32_two_segments_with_bss() {
        let m = mem();
        let phs = [
            (0x1000, 0x40_0000, 0x40_0000, 0x1800, 0x1800),
            (0x3000, 0x40_2000, 0x40_2000, 0x800, 0x3000),
        ];
        // Old contents where the bss goes: it must be zeroed.
        m.write_slice(&[0xaa; 0x3000], GuestAddress(0x40_2000))
            .unwrap();
        let f = elf32(0x40_0010, &phs);
        let k = load_bytes(&m, &f).unwrap();
        assert_eq!(
            k,
            MultibootKernel {
                entry: 0x40_0010,
                start: 0x40_0000,
                end: 0x40_5000,
                page_align_modules: false,
                video_requested: false,
            }
        );
        assert_eq!(read(&m, 0x40_0000, 0x1800), pattern(0x1000, 0x1800));
        assert_eq!(read(&m, 0x40_2000, 0x800), pattern(0x3000, 0x800));
        assert!(read(&m, 0x40_2800, 0x2800).iter().all(|&b| b == 0));
        // Nothing beyond the image.
        assert!(read(&m, 0x40_5000, 0x1000).iter().all(|&b| b == 0));
    }

    #[test]
    fn elf_entry_is_translated_from_virtual_to_physical() {
        let m = mem();
        // A higher-half kernel: linked at 0xc010_0000, loaded at 1 MiB.
        let f = elf32(0xc010_0020, &[(0x1000, 0xc010_0000, MB, 0x100, 0x100)]);
        let k = load_bytes(&m, &f).unwrap();
        assert_eq!(k.entry, 0x10_0020);
        assert_eq!(read(&m, MB, 0x100), pattern(0x1000, 0x100));
    }

    #[test]
    fn elf64_loads_by_paddr() {
        let m = mem();
        let f = elf64(
            0x20_0008,
            &[(0x1000, 0xffff_ffff_8020_0000, 0x20_0000, 0x400, 0x1400)],
        );
        // e_entry is physical here but in no segment's virtual range.
        let e = load_bytes(&m, &f).unwrap_err();
        assert!(e.contains("lies in no segment"), "{e}");
        let f = elf64(
            0xffff_ffff_8020_0008,
            &[(0x1000, 0xffff_ffff_8020_0000, 0x20_0000, 0x400, 0x1400)],
        );
        let k = load_bytes(&m, &f).unwrap();
        assert_eq!((k.entry, k.start, k.end), (0x20_0008, 0x20_0000, 0x20_1400));
        assert_eq!(read(&m, 0x20_0000, 0x400), pattern(0x1000, 0x400));
        assert!(read(&m, 0x20_0400, 0x1000).iter().all(|&b| b == 0));
    }

    /// A raw a.out-kludge image: `pre` bytes, the header at `pre` (rounded
    /// to 4), the pattern after it up to `len` bytes of file.
    fn aout(pre: usize, flags: u32, a: [u32; 5], len: usize) -> Vec<u8> {
        let mut f = pattern(0, len as u64);
        put(&mut f, pre, &mb_header(flags | FLAG_AOUT_KLUDGE, Some(a)));
        f
    }

    #[test]
    fn aout_kludge_with_bss_and_header_at_an_offset() {
        let m = mem();
        // The header at file offset 0x40, loaded at 0x10_0040: the load
        // starts at the file's start. 0x2000 bytes from the file, bss to
        // 0x10_5000.
        let a = [0x10_0040, 0x10_0000, 0x10_2000, 0x10_5000, 0x10_0060];
        m.write_slice(&[0x55; 0x3000], GuestAddress(0x10_2000))
            .unwrap();
        let f = aout(0x40, FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO, a, 0x3000);
        let k = load_bytes(&m, &f).unwrap();
        assert_eq!(
            k,
            MultibootKernel {
                entry: 0x10_0060,
                start: 0x10_0000,
                end: 0x10_5000,
                page_align_modules: true,
                video_requested: false,
            }
        );
        assert_eq!(read(&m, 0x10_0000, 0x2000), f[..0x2000].to_vec());
        assert!(read(&m, 0x10_2000, 0x3000).iter().all(|&b| b == 0));

        // The header 0x1000 into the file, the load starting 0x800 before
        // it: file offset 0x800 lands at load_addr. load_end_addr 0: to the
        // file's end; bss_end_addr 0: no bss.
        let m = mem();
        let a = [0x20_0800, 0x20_0000, 0, 0, 0x20_0900];
        let f = aout(0x1000, 0, a, 0x2000);
        let k = load_bytes(&m, &f).unwrap();
        assert_eq!((k.start, k.end, k.entry), (0x20_0000, 0x20_1800, 0x20_0900));
        assert_eq!(read(&m, 0x20_0000, 0x1800), f[0x800..].to_vec());
        assert_eq!(r32(&m, 0x20_0800), HEADER_MAGIC);
        assert!(read(&m, 0x20_1800, 0x1000).iter().all(|&b| b == 0));
    }

    #[test]
    fn video_mode_is_accepted_and_reported() {
        let m = mem();
        let a = [0x10_0000, 0x10_0000, 0, 0, 0x10_0000];
        let f = aout(0, FLAG_VIDEO_MODE, a, 0x100);
        assert!(load_bytes(&m, &f).unwrap().video_requested);
    }

    #[test]
    fn aout_rules() {
        let cases: Vec<([u32; 5], usize, usize, &str)> = vec![
            // header_addr below load_addr.
            (
                [0x10_0000, 0x10_1000, 0, 0, 0x10_1000],
                0,
                0x2000,
                "below its load_addr",
            ),
            // The load would start before the file.
            (
                [0x10_1000, 0x10_0000, 0, 0, 0x10_1000],
                0x40,
                0x2000,
                "before the file",
            ),
            // load_end_addr below load_addr.
            (
                [0x10_0000, 0x10_0000, 0xf_f000, 0, 0x10_0000],
                0,
                0x2000,
                "load_end_addr",
            ),
            // bss_end_addr below the loaded end.
            (
                [0x10_0000, 0x10_0000, 0x10_1000, 0x10_0800, 0x10_0000],
                0,
                0x2000,
                "bss_end_addr",
            ),
            // Truncated: it loads 0x4000 bytes of a 0x2000-byte file.
            (
                [0x10_0000, 0x10_0000, 0x10_4000, 0, 0x10_0000],
                0,
                0x2000,
                "truncated",
            ),
            // Over the MBI region.
            (
                [0x3_f000, 0x3_f000, 0, 0, 0x3_f000],
                0,
                0x2000,
                "where kvmini writes the multiboot information",
            ),
            // Beyond the 32 MiB of RAM.
            (
                [0x1ff_f000, 0x1ff_f000, 0, 0x200_1000, 0x1ff_f000],
                0,
                0x1000,
                "beyond the guest's RAM",
            ),
            // Across the device hole.
            (
                [0xbfff_f000, 0xbfff_f000, 0, 0xc000_1000, 0xbfff_f000],
                0,
                0x1000,
                "device hole",
            ),
            // Past 4 GiB: a 32-bit load_addr plus the whole file overflows
            // a u32 (computed in u64, then refused).
            (
                [0xffff_f000, 0xffff_f000, 0, 0, 0xffff_f000],
                0,
                0x2000,
                "device hole",
            ),
            // Entry in the bss.
            (
                [0x10_0000, 0x10_0000, 0x10_1000, 0x10_2000, 0x10_1800],
                0,
                0x2000,
                "entry point",
            ),
            // Entry outside the image.
            (
                [0x10_0000, 0x10_0000, 0, 0, 0x50_0000],
                0,
                0x2000,
                "entry point",
            ),
        ];
        for (a, pre, len, needle) in cases {
            refused(&aout(pre, 0, a, len), needle);
        }
    }

    #[test]
    fn elf_rules() {
        let one = |pa: u64, fsz: u64, msz: u64| elf32(pa as u32, &[(0x1000, pa, pa, fsz, msz)]);
        // Low memory that kvmini leaves alone is the kernel's: linked at
        // 32 KiB, as kvm-unit-tests' realmode test is.
        let m = mem();
        let k = load_bytes(&m, &one(0x8000, 0x100, 0x2000)).unwrap();
        assert_eq!((k.start, k.end, k.entry), (0x8000, 0xa000, 0x8000));
        assert_eq!(read(&m, 0x8000, 0x100), pattern(0x1000, 0x100));
        refused(&one(0x800, 0x100, 0x100), "page 0");
        refused(&one(0x2_f000, 0x100, 0x2000), "multiboot information");
        refused(&one(0x9_f000, 0x100, 0x2000), "the EBDA");
        refused(&one(0x1ff_f000, 0x100, 0x2000), "beyond the guest's RAM");
        refused(&one(0xbfff_f000, 0x100, 0x2000), "device hole");
        // filesz > memsz.
        refused(&one(MB, 0x200, 0x100), "only 256 in memory");
        // Truncated: the segment's bytes are past the file's end.
        let mut f = one(MB, 0x800, 0x800);
        f.truncate(0x1400);
        refused(&f, "truncated");
        // Overflowing u32 (ELF64 can say so): ends past 4 GiB.
        refused(
            &elf64(
                0xffff_f000,
                &[(0x1000, 0xffff_f000, 0xffff_f000, 0x10, 0x2000)],
            ),
            "device hole",
        );
        // Wrapping the address space.
        refused(
            &elf64(
                u64::MAX - 0xf,
                &[(0x1000, u64::MAX - 0xf, u64::MAX - 0xf, 0x10, 0x20)],
            ),
            "wraps",
        );
        // Entry in no segment, and entry in bss only.
        refused(
            &elf32(0x50_0000, &[(0x1000, MB, MB, 0x100, 0x100)]),
            "no segment",
        );
        refused(
            &elf32(0x10_0800, &[(0x1000, MB, MB, 0x100, 0x1000)]),
            "outside every byte loaded",
        );
        // Overlapping segments.
        refused(
            &elf32(
                0x10_0000,
                &[
                    (0x1000, MB, MB, 0x100, 0x2000),
                    (0x2000, MB + 0x1000, MB + 0x1000, 0x100, 0x100),
                ],
            ),
            "overlap",
        );
        // No PT_LOAD with a size.
        refused(&elf32(MB as u32, &[(0x1000, MB, MB, 0, 0)]), "no loadable");
        // Wrong machines and classes.
        let mut f = one(MB, 0x100, 0x100);
        f[18] = 62;
        refused(&f, "EM_386");
        let mut f = elf64(MB, &[(0x1000, MB, MB, 0x100, 0x100)]);
        f[18] = 3;
        refused(&f, "EM_X86_64");
        f[4] = 7;
        refused(&f, "unknown class");
        f[5] = 2;
        refused(&f, "big-endian");
        // Program headers beyond the file, or too many.
        let mut f = one(MB, 0x100, 0x100);
        put(&mut f, 0x1c, &0x10_0000u32.to_le_bytes());
        refused(&f, "beyond the end of the file");
        let mut f = one(MB, 0x100, 0x100);
        put(&mut f, 0x2c, &1000u16.to_le_bytes());
        refused(&f, "at most 256");
        put(&mut f, 0x2c, &0u16.to_le_bytes());
        refused(&f, "no program headers");
        // Neither bit 16 nor an ELF.
        let mut f = vec![0x90u8; 0x100];
        put(&mut f, 0x10, &mb_header(0, None));
        refused(&f, "not an ELF");
    }

    #[test]
    fn header_flag_and_addresses_must_agree() {
        let m = mem();
        let h = Header {
            flags: FLAG_AOUT_KLUDGE,
            offset: 0,
            addrs: None,
        };
        let e = load(&m, &h, &mut Cursor::new(vec![0u8; 64])).unwrap_err();
        assert!(e.contains("disagree"), "{e}");
    }

    #[test]
    fn modules_go_after_page_aligned_below_the_limit() {
        assert_eq!(module_address(0x10_0001, 0x10, 32 * MB), Some(0x10_1000));
        assert_eq!(module_address(0x10_1000, 0x10, 32 * MB), Some(0x10_1000));
        // Never below 1 MiB.
        assert_eq!(module_address(0, 0x10, 32 * MB), Some(MB));
        // It may end exactly at the limit, not past it.
        assert_eq!(module_address(MB, MB, 2 * MB), Some(MB));
        assert_eq!(module_address(MB, MB + 1, 2 * MB), None);
        // Never into the device hole, whatever the limit.
        assert_eq!(
            module_address(MMIO_GAP_START - 0x1000, 0x2000, u64::MAX),
            None
        );
        assert_eq!(
            module_address(MMIO_GAP_START - 0x1000, 0x1000, u64::MAX),
            Some(MMIO_GAP_START - 0x1000)
        );
        // No overflow.
        assert_eq!(module_address(u64::MAX, 1, u64::MAX), None);
        assert_eq!(module_address(MB, u64::MAX, u64::MAX), None);
    }

    #[test]
    fn mbi_region_is_free_in_the_layout() {
        let used = [
            (0, 0x1000, "page 0 (IVT; kvm-unit-tests' IDT)"),
            (BOOT_GDT_START, BOOT_GDT_START + 0x100, "boot GDT/IDT"),
            (PVH_INFO_START, ZERO_PAGE_START, "PVH start_info and map"),
            (ZERO_PAGE_START, PML4_START, "zero page and boot stack"),
            (
                PML4_START,
                PDE_START + IDENTITY_MAP_GIB * 0x1000,
                "page tables",
            ),
            (
                CMDLINE_START,
                CMDLINE_START + CMDLINE_MAX_SIZE as u64,
                "command line",
            ),
            (EBDA_START, HIMEM_START, "EBDA, ACPI tables, BIOS area"),
            (ACPI_START, HIMEM_START, "ACPI tables"),
        ];
        let (s, e) = (MBI_START, MBI_START + MBI_SIZE);
        for (us, ue, name) in used {
            assert!(e <= us || s >= ue, "the MBI region overlaps {name}");
        }
        assert!(e <= EBDA_START);
        // It is RAM in the e820 map of the smallest guest.
        let map = e820_map(crate::arch::layout::MIN_MEMORY);
        assert!(map
            .iter()
            .any(|m| m.kind == E820_RAM && m.addr <= s && e <= m.addr + m.size));
    }

    fn input<'a>(e820: &'a [E820Entry], cmdline: &'a [u8], modules: &'a [Module]) -> InfoInput<'a> {
        InfoInput {
            e820,
            cmdline,
            modules,
        }
    }

    #[test]
    fn info_reads_back_field_by_field() {
        let m = mem();
        let e820 = e820_map(RAM);
        let mods = [
            Module {
                start: 0x20_0000,
                end: 0x20_1234,
                cmdline: b"mod-one arg=1",
            },
            Module {
                start: 0x20_2000,
                end: 0x20_2000,
                cmdline: b"",
            },
        ];
        let cmdline = b"console=ttyS0 -- test";
        let addr = write_info(&m, &input(&e820, cmdline, &mods)).unwrap();
        assert_eq!(u64::from(addr), MBI_START);
        let a = u64::from(addr);
        let field = |off: u64| r32(&m, a + off);
        assert_eq!(
            field(0),
            INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MMAP | INFO_BOOT_LOADER_NAME
        );
        assert_eq!(field(0), 0b10_0100_1101);
        // 0..0x9fc00 is RAM in kvmini's map: 639 KiB.
        assert_eq!(field(4), 639);
        assert_eq!(u64::from(field(8)), (RAM - MB) / 1024);
        assert_eq!(field(12), 0, "no boot device");
        assert_eq!(cstr(&m, u64::from(field(16))), cmdline.to_vec());
        assert_eq!(field(20), 2);
        let mods_addr = u64::from(field(24));
        for (i, md) in mods.iter().enumerate() {
            let at = mods_addr + 16 * i as u64;
            assert_eq!(r32(&m, at), md.start);
            assert_eq!(r32(&m, at + 4), md.end);
            assert_eq!(cstr(&m, u64::from(r32(&m, at + 8))), md.cmdline.to_vec());
            assert_eq!(r32(&m, at + 12), 0);
        }
        assert_eq!(field(44) as usize, 24 * e820.len());
        let mmap = u64::from(field(48));
        let mut at = mmap;
        let mut entries = Vec::new();
        while at < mmap + u64::from(field(44)) {
            let size = r32(&m, at);
            assert_eq!(size, 20);
            entries.push(E820Entry {
                addr: r64(&m, at + 4),
                size: r64(&m, at + 12),
                kind: r32(&m, at + 20),
            });
            at += u64::from(size) + 4;
        }
        assert_eq!(entries, e820);
        assert_eq!(cstr(&m, u64::from(field(64))), b"kvmini".to_vec());
        // Everything it points to lies in the region.
        let end = MBI_START + MBI_SIZE;
        for p in [field(16), field(24), field(48), field(64)] {
            assert!((MBI_START..end).contains(&u64::from(p)), "{p:#x}");
        }
        // Symbols, drives, config table, APM, VBE: zero.
        for off in [28, 32, 36, 40, 52, 56, 60, 68, 72, 76, 80, 84] {
            assert_eq!(field(off), 0, "field at {off}");
        }
    }

    #[test]
    fn info_without_modules_or_cmdline() {
        let m = mem();
        // Stale bytes in the region must not show through.
        m.write_slice(&[0xff; 0x200], GuestAddress(MBI_START))
            .unwrap();
        let e820 = e820_map(5 << 30);
        let a = u64::from(write_info(&m, &input(&e820, b"", &[])).unwrap());
        let flags = r32(&m, a);
        assert_eq!(flags & INFO_MODS, 0);
        assert_ne!(flags & INFO_CMDLINE, 0);
        assert_eq!((r32(&m, a + 20), r32(&m, a + 24)), (0, 0));
        let cmdline = u64::from(r32(&m, a + 16));
        assert_ne!(cmdline, 0);
        assert_eq!(cstr(&m, cmdline), b"".to_vec());
        // mem_upper stops at the device hole.
        assert_eq!(u64::from(r32(&m, a + 8)), (MMIO_GAP_START - MB) / 1024);
        assert_eq!(r32(&m, a + 44) as usize, 24 * e820.len());
    }

    #[test]
    fn memory_fields_follow_the_map() {
        let e = |addr, size, kind| E820Entry { addr, size, kind };
        // Adjacent RAM entries, out of order, merge; reserved ones stop it.
        let map = [
            e(2 * MB, 2 * MB, E820_RAM),
            e(MB, MB, E820_RAM),
            e(4 * MB, MB, crate::memory::E820_RESERVED),
            e(0, 0x8_0000, E820_RAM),
        ];
        assert_eq!(contiguous_ram_kib(&map, MB), 3 * 1024);
        assert_eq!(contiguous_ram_kib(&map, 0), 512);
        assert_eq!(contiguous_ram_kib(&[], MB), 0);
        assert_eq!(
            contiguous_ram_kib(&[e(0, u64::MAX, E820_RAM)], MB),
            (u64::MAX - MB) / 1024
        );
    }

    #[test]
    fn info_refusals() {
        let m = mem();
        let e820 = e820_map(RAM);
        let big = vec![b'x'; MBI_SIZE as usize];
        let e = write_info(&m, &input(&e820, &big, &[])).unwrap_err();
        assert!(e.contains("does not fit"), "{e}");
        let e = write_info(&m, &input(&e820, b"a\0b", &[])).unwrap_err();
        assert!(e.contains("NUL"), "{e}");
        let bad = [Module {
            start: 0x20_1000,
            end: 0x20_0000,
            cmdline: b"",
        }];
        let e = write_info(&m, &input(&e820, b"", &bad)).unwrap_err();
        assert!(e.contains("before its start"), "{e}");
        // Nothing was written by the refusals.
        assert!(read(&m, MBI_START, MBI_SIZE as usize)
            .iter()
            .all(|&b| b == 0));
        // The largest command line that fits next to the MBI, the map, and
        // the loader name (each string with its NUL) is accepted, one byte
        // more is not.
        let fixed = MBI_LEN.next_multiple_of(8) + 24 * e820.len() + 1 + BOOT_LOADER_NAME.len() + 1;
        let fits = vec![b'y'; MBI_SIZE as usize - fixed];
        assert!(write_info(&m, &input(&e820, &fits, &[])).is_ok());
        let over = vec![b'y'; MBI_SIZE as usize - fixed + 1];
        assert!(write_info(&m, &input(&e820, &over, &[])).is_err());
        // A region outside guest RAM.
        let e = write_info_in(&m, &input(&e820, b"", &[]), RAM - 0x100, 0x1000).unwrap_err();
        assert!(e.contains("not guest RAM"), "{e}");
    }
}
