//! Fuzzes src/loader/multiboot.rs on arbitrary files: the header search,
//! the a.out-kludge and ELF32/ELF64 loaders into a 32 MiB guest, and the
//! multiboot information and module placement with inputs taken from the
//! same bytes.
//!
//! Invariants checked:
//! 1. Nothing panics, whatever the bytes (every field is untrusted).
//! 2. A header found is 4-byte aligned, wholly inside the first 8192 bytes
//!    (its address fields too, with flag bit 16), its checksum holds, and
//!    it has address fields exactly when flag bit 16 is set.
//! 3. A kernel that loads asked for no requirement kvmini lacks, lies in
//!    RAM and wrote nothing into a LOW_RESERVED range (what kvmini writes
//!    below 1 MiB for it), its entry is inside it, and nothing outside it was
//!    written; with the a.out kludge its first bytes are the file's from
//!    header offset - (header_addr - load_addr).
//! 4. The MBI, when written, is at MBI_START with the memory, command line,
//!    memory map and loader name flags, and its command line reads back.
//! 5. A module address is page-aligned, at or above both 1 MiB and
//!    `after`, and the module ends at or below the limit and the hole.

#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use kvmini::arch::layout::{HIMEM_START, MMIO_GAP_START};
use kvmini::loader::multiboot::{
    check_flags, find_header, load, module_address, write_info, InfoInput, Module,
    FLAG_AOUT_KLUDGE, HEADER_MAGIC, INFO_BOOT_LOADER_NAME, INFO_CMDLINE, INFO_MEMORY, INFO_MMAP,
    LOW_RESERVED, MBI_START, SEARCH_LEN,
};
use kvmini::memory::e820_map;

const RAM: u64 = 32 << 20;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Whether guest memory in [from, to) is all zero (compared a chunk at a
/// time: a byte loop over 32 MiB is slow under ASan).
fn zero(mem: &GuestMemoryMmap, from: u64, to: u64) -> bool {
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK];
    let mut buf = vec![0u8; CHUNK];
    let mut at = from;
    while at < to {
        let n = (to - at).min(CHUNK as u64) as usize;
        mem.read_slice(&mut buf[..n], GuestAddress(at)).unwrap();
        if buf[..n] != zeros[..n] {
            return false;
        }
        at += n as u64;
    }
    true
}

fn check_image(data: &[u8]) {
    let Some(h) = find_header(data) else {
        return;
    };
    assert_eq!(h.offset % 4, 0);
    let need = if h.flags & FLAG_AOUT_KLUDGE != 0 {
        32
    } else {
        12
    };
    assert!(h.offset + need <= data.len().min(SEARCH_LEN));
    assert_eq!(u32_at(data, h.offset), HEADER_MAGIC);
    assert_eq!(u32_at(data, h.offset + 4), h.flags);
    let sum = HEADER_MAGIC
        .wrapping_add(h.flags)
        .wrapping_add(u32_at(data, h.offset + 8));
    assert_eq!(sum, 0);
    assert_eq!(h.addrs.is_some(), h.flags & FLAG_AOUT_KLUDGE != 0);

    // Fresh (zero) memory each run, so that what was written can be told.
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    let Ok(k) = load(&mem, &h, &mut Cursor::new(data)) else {
        return;
    };
    assert!(check_flags(h.flags).is_ok());
    assert!(k.start < k.end);
    // Nothing was loaded where kvmini writes for the kernel afterwards
    // (segments may lie on both sides of such a range).
    for (lo, hi, what) in LOW_RESERVED {
        assert!(zero(&mem, lo, hi.min(RAM)), "the image wrote into {what}");
    }
    assert!(k.end <= RAM.min(MMIO_GAP_START));
    assert!(k.start <= u64::from(k.entry) && u64::from(k.entry) < k.end);
    assert!(zero(&mem, 0, k.start));
    assert!(zero(&mem, k.end, RAM));
    if let Some(a) = h.addrs {
        assert_eq!(k.start, u64::from(a.load_addr));
        // load checked these do not underflow.
        let offset = h.offset - (a.header_addr - a.load_addr) as usize;
        let from_file = match a.load_end_addr {
            0 => data.len() - offset,
            end => (end - a.load_addr) as usize,
        };
        let n = from_file.min(64);
        let mut got = vec![0u8; n];
        mem.read_slice(&mut got, GuestAddress(k.start)).unwrap();
        assert_eq!(got, data[offset..offset + n]);
    }
}

fn check_info(data: &[u8]) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let e820 = e820_map(u64::from(data.first().copied().unwrap_or(0)) << 24 | RAM);
    // Module strings and extents from 12-byte chunks; the command line is
    // what follows them (NULs and all: refused if there is one).
    let count = usize::from(data.get(1).copied().unwrap_or(0) % 16);
    let mut modules = Vec::new();
    let mut rest = data.get(2..).unwrap_or(&[]);
    for _ in 0..count {
        if rest.len() < 12 {
            break;
        }
        let (chunk, tail) = rest.split_at(12);
        let len = usize::from(chunk[8] % 4);
        modules.push(Module {
            start: u32_at(chunk, 0),
            end: u32_at(chunk, 4),
            cmdline: &chunk[9..9 + len],
        });
        rest = tail;
    }
    let input = InfoInput {
        e820: &e820,
        cmdline: rest,
        modules: &modules,
    };
    if let Ok(addr) = write_info(&mem, &input) {
        assert_eq!(u64::from(addr), MBI_START);
        let flags: u32 = mem.read_obj(GuestAddress(MBI_START)).unwrap();
        let want = INFO_MEMORY | INFO_CMDLINE | INFO_MMAP | INFO_BOOT_LOADER_NAME;
        assert_eq!(flags & want, want);
        let ptr: u32 = mem.read_obj(GuestAddress(MBI_START + 16)).unwrap();
        let mut got = vec![0u8; rest.len() + 1];
        mem.read_slice(&mut got, GuestAddress(u64::from(ptr)))
            .unwrap();
        assert_eq!(&got[..rest.len()], rest);
        assert_eq!(got[rest.len()], 0);
    }
}

fn check_module_address(data: &[u8]) {
    if data.len() < 24 {
        return;
    }
    let after = u64::from_le_bytes(data[0..8].try_into().unwrap());
    let len = u64::from_le_bytes(data[8..16].try_into().unwrap());
    let limit = u64::from_le_bytes(data[16..24].try_into().unwrap());
    if let Some(s) = module_address(after, len, limit) {
        assert_eq!(s % 4096, 0);
        assert!(s >= after && s >= HIMEM_START);
        let end = s.checked_add(len).unwrap();
        assert!(end <= limit && end <= MMIO_GAP_START);
    }
}

fuzz_target!(|data: &[u8]| {
    check_image(data);
    check_info(data);
    check_module_address(data);
});
