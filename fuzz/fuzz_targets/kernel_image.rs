//! Fuzzes the kernel-image checks of src/loader/validate.rs on arbitrary
//! files: an ELF's header and program headers, and a bzImage's setup
//! header.
//!
//! Invariants checked:
//! 1. Nothing panics, whatever the bytes (every field is untrusted).
//! 2. An ELF that passes `check_elf` has its entry in a segment's file
//!    bytes, every segment at or above 1 MiB, inside the file, with no more
//!    file bytes than memory bytes, and the returned end is past every
//!    segment.
//! 3. A bzImage that passes `check_bzimage` is as long as its setup header
//!    says and has XLF_KERNEL_64 set.

#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;

use kvmini::loader::validate::{check_bzimage, check_elf, read_elf, SETUP_HEADER_END};

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    if let Ok(elf) = read_elf(&mut Cursor::new(data)) {
        if let Ok(end) = check_elf(&elf, len) {
            assert!(elf
                .segments
                .iter()
                .any(|s| elf.entry >= s.paddr && elf.entry - s.paddr < s.filesz));
            for s in elf.segments.iter().filter(|s| s.memsz > 0) {
                assert!(s.paddr >= 1 << 20);
                assert!(s.filesz <= s.memsz);
                assert!(s.offset + s.filesz <= len);
                assert!(end >= s.paddr + s.memsz);
            }
        }
    }
    if check_bzimage(data, len).is_ok() {
        assert!(data.len() >= SETUP_HEADER_END);
        assert!(u16::from_le_bytes([data[0x236], data[0x237]]) & 1 == 1);
        let sects = match data[0x1f1] {
            0 => 4,
            n => u64::from(n),
        };
        let syssize = u64::from(u32::from_le_bytes(data[0x1f4..0x1f8].try_into().unwrap()));
        assert!(len >= (sects + 1) * 512 + syssize * 16);
    }
});
