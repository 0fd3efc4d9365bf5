//! `mbinfo`: what a multiboot boot gave the guest, and the PC conventions
//! test kernels look for, printed for kvmini's tests (and QEMU's, on the
//! same image):
//!
//! ```text
//! multiboot: magic ok, loader "kvmini"
//! memory: lower 639 KiB, upper 130048 KiB, 4 map entries, 128 MiB RAM
//! cmdline: mbinfo ...
//! module 0: 6 bytes at 0x114000, page-aligned, fnv1a 0x1a2b3c4d, string "..."
//! fw_cfg: QEMU, 1 CPUs, 128 MiB
//! acpi: RSDT FACP APIC, PM timer at port 0x60c ticking
//! ```
//!
//! Then exit 0; booted any other way: "mbinfo: not a multiboot boot",
//! exit 3; a wrong magic in EAX: "multiboot: bad magic", exit 3.

use crate::bootinfo::BootInfo;
use crate::io::{self, COM1};

fn put_dec(v: u64) {
    let mut d = [0u8; 20];
    io::puts(COM1, io::fmt_u64(v, &mut d));
}

fn put_hex(v: u64) {
    let mut d = [0u8; 16];
    let mut n = 0;
    let mut x = v;
    loop {
        d[15 - n] = b"0123456789abcdef"[(x & 0xf) as usize];
        n += 1;
        x >>= 4;
        if x == 0 {
            break;
        }
    }
    io::puts(COM1, b"0x");
    io::puts(COM1, &d[16 - n..]);
}

/// FNV-1a, 32 bits: the tests compute it over the module file.
fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

fn rd32(addr: u64) -> u32 {
    // SAFETY: callers pass addresses inside the BIOS area or ACPI tables,
    // identity-mapped RAM (or ROM) below 4 GiB.
    unsafe { core::ptr::read_unaligned(addr as *const u32) }
}

fn fw_cfg() {
    const SELECT: u16 = 0x510;
    const DATA: u16 = 0x511;
    let item = |key: u16, n: usize| {
        io::outw(SELECT, key);
        let mut v: u64 = 0;
        for i in 0..n {
            v |= u64::from(io::inb(DATA)) << (8 * i);
        }
        v
    };
    io::puts(COM1, b"fw_cfg: ");
    let sig = item(0, 4).to_le_bytes();
    if &sig[..4] != b"QEMU" {
        io::puts(COM1, b"none\n");
        return;
    }
    io::puts(COM1, b"QEMU, ");
    put_dec(item(5, 2));
    io::puts(COM1, b" CPUs, ");
    put_dec(item(3, 8) >> 20);
    io::puts(COM1, b" MiB\n");
}

/// The RSDP by the BIOS-area scan, the RSDT's tables, and the PM timer the
/// FADT names, read twice with a pause between.
fn acpi() {
    io::puts(COM1, b"acpi: ");
    let Some(rsdp) = (0xe0000u64..0x100000)
        .step_by(16)
        .find(|&a| rd32(a) == u32::from_le_bytes(*b"RSD ") && rd32(a + 4) == u32::from_le_bytes(*b"PTR "))
    else {
        io::puts(COM1, b"no RSDP\n");
        return;
    };
    let rsdt = u64::from(rd32(rsdp + 16));
    if rsdt == 0 || rd32(rsdt) != u32::from_le_bytes(*b"RSDT") {
        io::puts(COM1, b"no RSDT\n");
        return;
    }
    io::puts(COM1, b"RSDT");
    let len = u64::from(rd32(rsdt + 4)).min(36 + 4 * 64);
    let mut pm_timer = 0u16;
    let mut at = rsdt + 36;
    while at + 4 <= rsdt + len {
        let table = u64::from(rd32(at));
        let sig = rd32(table).to_le_bytes();
        io::puts(COM1, b" ");
        io::puts(COM1, &sig);
        if &sig == b"FACP" {
            pm_timer = rd32(table + 76) as u16;
        }
        at += 4;
    }
    if pm_timer == 0 {
        io::puts(COM1, b", no PM timer\n");
        return;
    }
    io::puts(COM1, b", PM timer at port ");
    put_hex(u64::from(pm_timer));
    let t0 = io::inl(pm_timer);
    // A pause long enough for a 3.58 MHz counter to move.
    for _ in 0..2000 {
        io::inb(0x80);
    }
    let t1 = io::inl(pm_timer);
    io::puts(COM1, if t1 != t0 { b" ticking\n" } else { b" stuck\n" });
}

pub fn run(boot: &BootInfo) -> ! {
    let Some(mb) = boot.multiboot else {
        io::puts(COM1, b"mbinfo: not a multiboot boot\n");
        io::exit(3)
    };
    if !mb.magic_ok {
        io::puts(COM1, b"multiboot: bad magic\n");
        io::exit(3)
    }
    io::puts(COM1, b"multiboot: magic ok, flags ");
    put_hex(u64::from(mb.flags));
    io::puts(COM1, b", loader \"");
    io::puts(COM1, mb.loader);
    io::puts(COM1, b"\"\nmemory: lower ");
    put_dec(u64::from(mb.mem_lower));
    io::puts(COM1, b" KiB, upper ");
    put_dec(u64::from(mb.mem_upper));
    io::puts(COM1, b" KiB, ");
    put_dec(u64::from(mb.mmap_entries));
    io::puts(COM1, b" map entries, ");
    put_dec(boot.ram_bytes.div_ceil(1 << 20));
    io::puts(COM1, b" MiB RAM\ncmdline: ");
    io::puts(COM1, boot.cmdline);
    io::puts(COM1, b"\n");
    for i in 0..mb.mods_count {
        let m = mb.module(i);
        let len = m.end.saturating_sub(m.start);
        // SAFETY: the module's bytes lie in RAM the loader filled.
        let bytes = unsafe { core::slice::from_raw_parts(m.start as usize as *const u8, len as usize) };
        io::puts(COM1, b"module ");
        put_dec(u64::from(i));
        io::puts(COM1, b": ");
        put_dec(u64::from(len));
        io::puts(COM1, b" bytes at ");
        put_hex(u64::from(m.start));
        io::puts(COM1, if m.start % 4096 == 0 { b", page-aligned" } else { b", unaligned" });
        io::puts(COM1, b", fnv1a ");
        put_hex(u64::from(fnv1a(bytes)));
        io::puts(COM1, b", string \"");
        io::puts(COM1, m.string);
        io::puts(COM1, b"\"\n");
    }
    fw_cfg();
    acpi();
    io::exit(0)
}
