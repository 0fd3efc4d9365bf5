//! A kernel image checked against kvmini's memory layout before anything
//! is loaded: what linux-loader accepts but cannot run, or would run over
//! kvmini's own boot data, is refused here with the rule it breaks.
//!
//! ELF: there are program headers; every loadable segment (PT_LOAD) has no
//! more bytes in the file than in memory, lies inside the file, does not
//! wrap, lies at or above 1 MiB (below it kvmini writes the zero page, page
//! tables, command line, MP and ACPI tables) and outside the MMIO hole, and
//! overlaps no other; the entry point, and the PVH entry if there is one,
//! lies in a segment's bytes from the file. bzImage: boot protocol 2.12 or
//! later with XLF_KERNEL_64 in xloadflags (kvmini enters at the 64-bit
//! entry), and the file as long as its setup header says.
//!
//! Every field comes from an untrusted file: every sum is checked, every
//! count bounded, and a failed read is a refusal, never a panic.

use std::io::{Read, Seek, SeekFrom};

use crate::arch::layout::{HIMEM_START, MMIO_GAP_END, MMIO_GAP_START};

/// One loadable segment, as its program header describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
}

/// What kvmini needs of an ELF image: its entry and loadable segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfImage {
    pub entry: u64,
    pub segments: Vec<Segment>,
}

/// More program headers than any kernel has; beyond it the image is refused
/// rather than read.
const MAX_PROGRAM_HEADERS: u16 = 256;
const PT_LOAD: u32 = 1;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: u64 = 56;

/// Little-endian fields of an image's bytes; `at` and the field's width
/// must lie inside `b` (callers check lengths first). Shared with
/// multiboot.rs.
pub(super) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Reads the ELF64 header and program headers (PT_LOAD ones kept).
pub fn read_elf<R: Read + Seek>(image: &mut R) -> Result<ElfImage, String> {
    let mut ehdr = [0u8; EHDR_SIZE];
    image
        .seek(SeekFrom::Start(0))
        .and_then(|_| image.read_exact(&mut ehdr))
        .map_err(|_| "the ELF header is cut short".to_string())?;
    let entry = u64_at(&ehdr, 0x18);
    let phoff = u64_at(&ehdr, 0x20);
    let phentsize = u64::from(u16_at(&ehdr, 0x36));
    let phnum = u16_at(&ehdr, 0x38);
    if phnum == 0 {
        return Err("it has no program headers: nothing to load".into());
    }
    if phnum > MAX_PROGRAM_HEADERS {
        return Err(format!(
            "it has {phnum} program headers (at most {MAX_PROGRAM_HEADERS})"
        ));
    }
    if phentsize < PHDR_SIZE {
        return Err(format!(
            "its program headers are {phentsize} bytes each, less than ELF64's {PHDR_SIZE}"
        ));
    }
    let mut segments = Vec::new();
    for i in 0..u64::from(phnum) {
        let mut ph = [0u8; PHDR_SIZE as usize];
        let at = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .ok_or_else(|| format!("program header {i} lies beyond any file"))?;
        image
            .seek(SeekFrom::Start(at))
            .and_then(|_| image.read_exact(&mut ph))
            .map_err(|_| format!("program header {i} lies beyond the end of the file"))?;
        if u32_at(&ph, 0) == PT_LOAD {
            segments.push(Segment {
                offset: u64_at(&ph, 0x08),
                paddr: u64_at(&ph, 0x18),
                filesz: u64_at(&ph, 0x20),
                memsz: u64_at(&ph, 0x28),
            });
        }
    }
    Ok(ElfImage { entry, segments })
}

/// Checks an ELF image's segments and entry against the layout; returns the
/// first byte after everything it occupies in memory (zero-filled parts
/// included, which the initramfs must not be put in).
pub fn check_elf(elf: &ElfImage, file_len: u64) -> Result<u64, String> {
    let loads: Vec<(usize, &Segment)> = elf
        .segments
        .iter()
        .enumerate()
        .filter(|(_, s)| s.memsz > 0)
        .collect();
    if loads.is_empty() {
        return Err("it has no loadable segment (PT_LOAD with a size)".into());
    }
    let mut end = 0u64;
    for &(i, s) in &loads {
        if s.filesz > s.memsz {
            return Err(format!(
                "segment {i} has {} bytes in the file but only {} in memory",
                s.filesz, s.memsz
            ));
        }
        let file_end = s.offset.checked_add(s.filesz);
        if file_end.is_none_or(|e| e > file_len) {
            return Err(format!(
                "segment {i} needs file bytes {:#x}+{:#x}, beyond the file's {file_len} bytes \
                 (a truncated image?)",
                s.offset, s.filesz
            ));
        }
        let Some(seg_end) = s.paddr.checked_add(s.memsz) else {
            return Err(format!(
                "segment {i} at {:#x} wraps around the address space",
                s.paddr
            ));
        };
        if s.paddr < HIMEM_START {
            return Err(format!(
                "segment {i} at {:#x}-{seg_end:#x} lies below 1 MiB, where kvmini writes the \
                 zero page, page tables, command line and ACPI tables (kernels load at 1 MiB \
                 or above)",
                s.paddr
            ));
        }
        if s.paddr < MMIO_GAP_END && seg_end > MMIO_GAP_START {
            return Err(format!(
                "segment {i} at {:#x}-{seg_end:#x} overlaps the MMIO hole \
                 {MMIO_GAP_START:#x}-{MMIO_GAP_END:#x}",
                s.paddr
            ));
        }
        end = end.max(seg_end);
    }
    for (a, &(i, s)) in loads.iter().enumerate() {
        for &(j, t) in &loads[a + 1..] {
            if s.paddr < t.paddr + t.memsz && t.paddr < s.paddr + s.memsz {
                return Err(format!("segments {i} and {j} overlap in memory"));
            }
        }
    }
    check_entry(elf, elf.entry, "the entry point")?;
    Ok(end)
}

/// `addr` (the ELF entry, or the PVH entry) must be in bytes a segment
/// loads from the file: elsewhere there is nothing, or zeros, to run.
pub fn check_entry(elf: &ElfImage, addr: u64, what: &str) -> Result<(), String> {
    let inside = elf
        .segments
        .iter()
        .any(|s| addr >= s.paddr && addr - s.paddr < s.filesz);
    if inside {
        Ok(())
    } else {
        Err(format!(
            "{what} {addr:#x} lies outside every segment loaded from the file"
        ))
    }
}

/// The setup header's end: bytes of a bzImage [`check_bzimage`] reads.
pub const SETUP_HEADER_END: usize = 0x268;
const XLF_KERNEL_64: u16 = 1;

/// Checks a bzImage's setup header (the image's first
/// [`SETUP_HEADER_END`] bytes, or fewer) against what kvmini boots.
pub fn check_bzimage(head: &[u8], file_len: u64) -> Result<(), String> {
    if head.len() < SETUP_HEADER_END {
        return Err(format!(
            "the file ends inside its setup header ({file_len} bytes)"
        ));
    }
    let version = u16_at(head, 0x206);
    if version < 0x020c {
        return Err(format!(
            "boot protocol {}.{:02} is older than 2.12, which says (xloadflags) whether the \
             kernel has the 64-bit entry kvmini uses",
            version >> 8,
            version & 0xff
        ));
    }
    if u16_at(head, 0x236) & XLF_KERNEL_64 == 0 {
        return Err(
            "a 32-bit kernel: its xloadflags lack XLF_KERNEL_64, and kvmini enters \
                    kernels at their 64-bit entry"
                .into(),
        );
    }
    let setup_sects = match head[0x1f1] {
        0 => 4,
        n => u64::from(n),
    };
    let syssize = u64::from(u32_at(head, 0x1f4));
    let need = (setup_sects + 1) * 512 + syssize * 16;
    if file_len < need {
        return Err(format!(
            "truncated: its setup header says {need} bytes, the file has {file_len}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn seg(paddr: u64, filesz: u64, memsz: u64) -> Segment {
        Segment {
            offset: 0x1000,
            paddr,
            filesz,
            memsz,
        }
    }

    fn elf(entry: u64, segments: Vec<Segment>) -> ElfImage {
        ElfImage { entry, segments }
    }

    const MB: u64 = 1 << 20;

    #[test]
    fn a_kernel_shaped_image_passes_and_its_end_counts_the_zero_fill() {
        let e = elf(
            MB,
            vec![seg(MB, 0x2000, 0x2000), seg(MB + 0x2000, 0, 0x5000)],
        );
        assert_eq!(check_elf(&e, 0x4000), Ok(MB + 0x7000));
    }

    #[test]
    fn each_rule_is_named() {
        let cases: Vec<(ElfImage, u64, &str)> = vec![
            (elf(MB, vec![]), 0x4000, "no loadable segment"),
            (elf(MB, vec![seg(MB, 0, 0)]), 0x4000, "no loadable segment"),
            (elf(MB, vec![seg(MB, 0x3000, 0x2000)]), 0x8000, "only"),
            (elf(MB, vec![seg(MB, 0x2000, 0x2000)]), 0x2000, "truncated"),
            (
                elf(0x7000, vec![seg(0x7000, 0x3000, 0x3000)]),
                0x8000,
                "below 1 MiB",
            ),
            (
                elf(u64::MAX - 8, vec![seg(u64::MAX - 8, 0, 16)]),
                0x4000,
                "wraps",
            ),
            (
                elf(
                    MMIO_GAP_START,
                    vec![seg(MMIO_GAP_START - 0x1000, 0x2000, 0x2000)],
                ),
                0x8000,
                "MMIO hole",
            ),
            (
                elf(
                    MB,
                    vec![seg(MB, 0x2000, 0x2000), seg(MB + 0x1000, 0x100, 0x100)],
                ),
                0x8000,
                "overlap",
            ),
            (
                elf(MB + 0x3000, vec![seg(MB, 0x2000, 0x4000)]),
                0x8000,
                "entry point",
            ),
            (
                elf(8 * MB, vec![seg(MB, 0x2000, 0x2000)]),
                0x8000,
                "entry point",
            ),
        ];
        for (e, len, needle) in cases {
            let err = check_elf(&e, len).unwrap_err();
            assert!(err.contains(needle), "{e:?}: {err}");
        }
    }

    #[test]
    fn program_headers_are_read_bounded() {
        let mut ehdr = vec![0u8; 64];
        ehdr[..4].copy_from_slice(b"\x7fELF");
        // No program headers.
        let e = read_elf(&mut Cursor::new(ehdr.clone())).unwrap_err();
        assert!(e.contains("no program headers"), "{e}");
        // One announced beyond the file.
        ehdr[0x20..0x28].copy_from_slice(&0x1000u64.to_le_bytes());
        ehdr[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        ehdr[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let e = read_elf(&mut Cursor::new(ehdr.clone())).unwrap_err();
        assert!(e.contains("beyond the end"), "{e}");
        // An offset that overflows.
        ehdr[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        ehdr[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        assert!(read_elf(&mut Cursor::new(ehdr.clone())).is_err());
        // Too many.
        ehdr[0x38..0x3a].copy_from_slice(&1000u16.to_le_bytes());
        assert!(read_elf(&mut Cursor::new(ehdr.clone()))
            .unwrap_err()
            .contains("at most"));
        // Cut short.
        assert!(read_elf(&mut Cursor::new(vec![0x7f, b'E']))
            .unwrap_err()
            .contains("cut short"));
    }

    fn bz(version: u16, xload: u16, setup_sects: u8, syssize: u32) -> Vec<u8> {
        let mut h = vec![0u8; SETUP_HEADER_END];
        h[0x1f1] = setup_sects;
        h[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
        h[0x202..0x206].copy_from_slice(b"HdrS");
        h[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        h[0x236..0x238].copy_from_slice(&xload.to_le_bytes());
        h
    }

    #[test]
    fn bzimage_rules() {
        let len = (28 + 1) * 512 + 0x1000 * 16;
        assert_eq!(check_bzimage(&bz(0x020f, 1, 28, 0x1000), len), Ok(()));
        let e = check_bzimage(&bz(0x020f, 1, 28, 0x1000), len - 1).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let e = check_bzimage(&bz(0x020f, 0, 28, 0x1000), len).unwrap_err();
        assert!(e.contains("32-bit"), "{e}");
        let e = check_bzimage(&bz(0x020a, 1, 28, 0x1000), len).unwrap_err();
        assert!(e.contains("2.10 is older"), "{e}");
        // setup_sects 0 means 4.
        assert_eq!(check_bzimage(&bz(0x020f, 1, 0, 1), 5 * 512 + 16), Ok(()));
        assert!(check_bzimage(&bz(0x020f, 1, 0, 1)[..0x210], 0x210).is_err());
    }
}
