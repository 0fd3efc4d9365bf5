//! `chaos=SEED [ops=N]`: a hostile but well-defined guest. It pokes random
//! ports (all sizes, string I/O), abuses both UARTs, and touches unbacked
//! MMIO, while never writing any port in a way that legitimately ends the VM
//! (see `write_rule`). Then it restores COM1, checks its scratch register and
//! prints `\nchaos <SEED> done\n`.

use core::arch::asm;

use crate::io::{self, COM1, COM2, FCR, IER, LCR, MCR, SCR, THR};

/// xorshift64* (Vigna), seeded through the splitmix64 finalizer so that
/// every seed, 0 included, gives a non-zero, well-mixed state.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(if z == 0 { 0x9e37_79b9_7f4a_7c15 } else { z })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Ports worth hitting more often than chance would: the UARTs, i8042,
/// debug exit, POST, CMOS, PIC, PIT, speaker, port 92, PCI config.
const INTERESTING: [u16; 38] = [
    0x3f8, 0x3f9, 0x3fa, 0x3fb, 0x3fc, 0x3fd, 0x3fe, 0x3ff, //
    0x2f8, 0x2f9, 0x2fa, 0x2fb, 0x2fc, 0x2fd, 0x2fe, 0x2ff, //
    0x60, 0x64, 0xf4, 0x80, 0x70, 0x71, 0x20, 0x21, //
    0x40, 0x41, 0x42, 0x43, 0x61, 0x92, //
    0xcf8, 0xcf9, 0xcfa, 0xcfb, 0xcfc, 0xcfd, 0xcfe, 0xcff,
];

/// Unbacked guest-physical MMIO window: identity-mapped, no RAM, and below
/// the IOAPIC/LAPIC range 0xfec00000..0xfeefffff, which we must not touch.
const MMIO_START: u64 = 0xd000_0000;
const MMIO_END: u64 = 0xfec0_0000; // exclusive

#[derive(PartialEq)]
enum WriteRule {
    /// Any value may be written.
    Any,
    /// Any value except 0xFE in the low byte (1-byte write to 0x64).
    NotFe,
    /// Must not be written at all.
    Never,
}

/// The never-write list: anything touching 0xf4..=0xf7 (the debug exit:
/// kvmini and QEMU's isa-debug-exit end the VM on a write of any width
/// there), a 1-byte write of 0xFE to 0x64 (i8042 reset), anything touching
/// 0x600..=0x60f (ACPI PM) or 0x505 (pvpanic). To stay clear of VMMs that
/// decode by range, a wider access that merely overlaps 0x64 without
/// starting there is refused too.
fn write_rule(port: u16, size: u8) -> WriteRule {
    let (lo, hi) = (port as u32, port as u32 + size as u32); // [lo, hi)
    let hits = |p: u32| lo <= p && p < hi;
    if (lo < 0x610 && hi > 0x600) || hits(0x505) {
        return WriteRule::Never;
    }
    if lo < 0xf8 && hi > 0xf4 {
        return WriteRule::Never;
    }
    if hits(0x64) {
        return match (lo == 0x64, size) {
            (true, 1) => WriteRule::NotFe,
            (true, _) => WriteRule::Any,
            _ => WriteRule::Never,
        };
    }
    WriteRule::Any
}

fn random_port(rng: &mut Rng) -> u16 {
    if rng.next() & 1 == 0 {
        INTERESTING[rng.below(INTERESTING.len() as u64) as usize]
    } else {
        rng.next() as u16
    }
}

fn random_size(rng: &mut Rng) -> u8 {
    [1, 2, 4][rng.below(3) as usize]
}

fn port_in(port: u16, size: u8) {
    match size {
        1 => drop(io::inb(port)),
        2 => drop(io::inw(port)),
        _ => drop(io::inl(port)),
    }
}

/// (a) one random `in` or `out`.
fn op_port(rng: &mut Rng) {
    let (port, size) = (random_port(rng), random_size(rng));
    let mut val = rng.next() as u32;
    let rule = write_rule(port, size);
    if rng.next() & 1 == 0 || rule == WriteRule::Never {
        port_in(port, size);
        return;
    }
    if rule == WriteRule::NotFe && val as u8 == 0xfe {
        val ^= 1;
    }
    match size {
        1 => io::outb(port, val as u8),
        2 => io::outw(port, val as u16),
        _ => io::outl(port, val),
    }
}

/// (b) one `rep ins*` / `rep outs*` of 1..=64 elements.
fn op_string(rng: &mut Rng, buf: &mut [u8; 256]) {
    let (port, size) = (random_port(rng), random_size(rng));
    let count = 1 + rng.below(64) as usize;
    let bytes = &mut buf[..count * size as usize];
    let rule = write_rule(port, size);
    if rng.next() & 1 == 0 || rule == WriteRule::Never {
        io::rep_ins(port, size, bytes);
        return;
    }
    for chunk in bytes.chunks_mut(8) {
        let r = rng.next().to_le_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
    if rule == WriteRule::NotFe {
        for b in bytes.iter_mut() {
            if *b == 0xfe {
                *b = 0xff;
            }
        }
    }
    io::rep_outs(port, size, bytes);
}

/// (c) abuse every register of COM1 or COM2.
fn op_uart(rng: &mut Rng) {
    let base = if rng.next() & 1 == 0 { COM1 } else { COM2 };
    let r = rng.next().to_le_bytes();
    let lcr = io::inb(base + LCR);
    io::outb(base + LCR, lcr | 0x80); // DLAB on
    io::outb(base + THR, r[0]); // DLL
    io::outb(base + IER, r[1]); // DLM
    io::inb(base + THR);
    io::inb(base + IER);
    io::outb(base + LCR, r[2] & 0x7f); // DLAB off, random line format
    io::outb(base + FCR, r[3]); // random FIFO enable/reset/trigger bits
    io::outb(base + IER, r[4]); // random IER (IF stays 0: nothing delivered)
    io::outb(base + SCR, r[5]);
    io::inb(base + SCR);
    io::outb(base + MCR, r[6] | 0x10); // loopback on
    io::outb(base + THR, r[7]); // looped back into RBR
    io::inb(base + THR);
    io::outb(base + MCR, r[6] & !0x10); // loopback off
    for off in 0..8 {
        io::inb(base + off);
    }
}

/// (d) one MMIO read or write of 1, 2, 4 or 8 bytes in the unbacked window.
fn op_mmio(rng: &mut Rng) {
    let size = 1u64 << rng.below(4);
    let addr = MMIO_START + rng.below(MMIO_END - MMIO_START - 8);
    let val = rng.next();
    let write = rng.next() & 1 == 0;
    // SAFETY: `addr` is identity-mapped (by the VMM or by boot.S) but has no
    // RAM behind it, so the access is an MMIO exit to the VMM and touches no
    // memory Rust knows about. The range stays below the APICs.
    unsafe {
        match (size, write) {
            (1, false) => {
                asm!("mov {v:l}, byte ptr [{a}]", a = in(reg) addr, v = out(reg) _, options(nostack))
            }
            (2, false) => {
                asm!("mov {v:x}, word ptr [{a}]", a = in(reg) addr, v = out(reg) _, options(nostack))
            }
            (4, false) => {
                asm!("mov {v:e}, dword ptr [{a}]", a = in(reg) addr, v = out(reg) _, options(nostack))
            }
            (_, false) => {
                asm!("mov {v}, qword ptr [{a}]", a = in(reg) addr, v = out(reg) _, options(nostack))
            }
            (1, true) => {
                asm!("mov byte ptr [{a}], {v:l}", a = in(reg) addr, v = in(reg) val, options(nostack))
            }
            (2, true) => {
                asm!("mov word ptr [{a}], {v:x}", a = in(reg) addr, v = in(reg) val, options(nostack))
            }
            (4, true) => {
                asm!("mov dword ptr [{a}], {v:e}", a = in(reg) addr, v = in(reg) val, options(nostack))
            }
            (_, true) => {
                asm!("mov qword ptr [{a}], {v}", a = in(reg) addr, v = in(reg) val, options(nostack))
            }
        }
    }
}

pub fn run(seed: u64, ops: u64) -> ! {
    let mut rng = Rng::new(seed);
    let mut buf = [0u8; 256];
    for _ in 0..ops {
        match rng.below(20) {
            0..=7 => op_port(&mut rng),
            8..=11 => op_string(&mut rng, &mut buf),
            12..=14 => op_uart(&mut rng),
            _ => op_mmio(&mut rng),
        }
    }

    // Restore COM1: 115200 8N1, no interrupts, FIFOs reset then off, loopback off.
    io::outb(COM1 + LCR, 0x80);
    io::outb(COM1 + THR, 1); // DLL
    io::outb(COM1 + IER, 0); // DLM
    io::outb(COM1 + LCR, 0x03);
    io::outb(COM1 + IER, 0);
    io::outb(COM1 + FCR, 0x07);
    io::outb(COM1 + FCR, 0x00);
    io::outb(COM1 + MCR, 0x00);
    // The UART must still behave like a UART: scratch holds what we write.
    let want = rng.next() as u8;
    io::outb(COM1 + SCR, want);
    let ok = io::inb(COM1 + SCR) == want;

    let mut digits = [0u8; 20];
    io::puts(COM1, b"\nchaos ");
    io::puts(COM1, io::fmt_u64(seed, &mut digits));
    if ok {
        io::puts(COM1, b" done\n");
        io::exit(0)
    } else {
        io::puts(COM1, b" scratch mismatch\n");
        io::exit(1)
    }
}
