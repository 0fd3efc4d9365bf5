//! Port I/O, the 16550 UARTs and the ways out of the VM.
//!
//! Everything here is plain `in`/`out` (and `rep ins`/`rep outs` on slices):
//! the guest never enables interrupts and never touches the local APIC.

use core::arch::asm;

/// COM1 and COM2 16550 base ports.
pub const COM1: u16 = 0x3f8;
pub const COM2: u16 = 0x2f8;
/// 16550 register offsets.
pub const THR: u16 = 0; // RBR on read; DLL when LCR.DLAB=1
pub const IER: u16 = 1; // DLM when LCR.DLAB=1
pub const FCR: u16 = 2; // IIR on read
pub const LCR: u16 = 3;
pub const MCR: u16 = 4;
pub const LSR: u16 = 5;
pub const SCR: u16 = 7;
/// LSR bits.
pub const LSR_DR: u8 = 0x01; // data ready
pub const LSR_THRE: u8 = 0x20; // transmit holding register empty

/// isa-debug-exit: a 1-byte write of N ends the VM with status N.
pub const DEBUG_EXIT: u16 = 0xf4;
/// i8042 command port: writing 0xFE pulses the CPU reset line.
pub const I8042_CMD: u16 = 0x64;

// Port I/O cannot break Rust's memory model: there is no DMA-capable device
// in this guest, and `in`/`out` touch no memory. The wrappers are therefore
// safe functions (even though a write may end the VM, which is the point).

#[inline(always)]
pub fn outb(port: u16, val: u8) {
    // SAFETY: port I/O accesses no memory (see above).
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") val, options(nomem, nostack, preserves_flags))
    }
}

#[inline(always)]
pub fn outw(port: u16, val: u16) {
    // SAFETY: port I/O accesses no memory.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") val, options(nomem, nostack, preserves_flags))
    }
}

#[inline(always)]
pub fn outl(port: u16, val: u32) {
    // SAFETY: port I/O accesses no memory.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") val, options(nomem, nostack, preserves_flags))
    }
}

#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: port I/O accesses no memory.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    }
    v
}

#[inline(always)]
pub fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: port I/O accesses no memory.
    unsafe {
        asm!("in ax, dx", in("dx") port, out("ax") v, options(nomem, nostack, preserves_flags))
    }
    v
}

#[inline(always)]
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: port I/O accesses no memory.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// `rep outs{b,w,d}`: write `buf.len() / size` elements of `size` (1, 2 or 4)
/// bytes to `port` in one string instruction. KVM still exits to the VMM
/// once per element (perf's kvm:kvm_pio counts 50 for the 49-byte `hello`
/// banner plus the debug exit), but the loop itself costs no instructions,
/// which on an emulating KVM is what a plain `out` loop loses: measured
/// 3.5 ms against 3.0 ms for kvmini's whole `hello` lifecycle here.
pub fn rep_outs(port: u16, size: u8, buf: &[u8]) {
    let count = buf.len() / size as usize;
    let src = buf.as_ptr();
    // SAFETY: reads exactly count*size bytes from `buf`, which is valid for
    // reads of buf.len() >= count*size bytes. DF is clear (Rust ABI, and the
    // entry code does `cld`).
    unsafe {
        match size {
            1 => {
                asm!("rep outsb", in("dx") port, inout("rsi") src => _, inout("rcx") count => _, options(nostack, readonly, preserves_flags))
            }
            2 => {
                asm!("rep outsw", in("dx") port, inout("rsi") src => _, inout("rcx") count => _, options(nostack, readonly, preserves_flags))
            }
            _ => {
                asm!("rep outsd", in("dx") port, inout("rsi") src => _, inout("rcx") count => _, options(nostack, readonly, preserves_flags))
            }
        }
    }
}

/// `rep ins{b,w,d}`: read `buf.len() / size` elements from `port` into `buf`.
pub fn rep_ins(port: u16, size: u8, buf: &mut [u8]) {
    let count = buf.len() / size as usize;
    let dst = buf.as_mut_ptr();
    // SAFETY: writes exactly count*size bytes into `buf`, which we borrow
    // mutably and which is valid for that many bytes. DF is clear.
    unsafe {
        match size {
            1 => {
                asm!("rep insb", in("dx") port, inout("rdi") dst => _, inout("rcx") count => _, options(nostack, preserves_flags))
            }
            2 => {
                asm!("rep insw", in("dx") port, inout("rdi") dst => _, inout("rcx") count => _, options(nostack, preserves_flags))
            }
            _ => {
                asm!("rep insd", in("dx") port, inout("rdi") dst => _, inout("rcx") count => _, options(nostack, preserves_flags))
            }
        }
    }
}

/// Write one byte to a 16550 at `base` the way a driver does: poll LSR.THRE
/// (a 1-byte `in`) before every byte.
pub fn putc(base: u16, b: u8) {
    while inb(base + LSR) & LSR_THRE == 0 {}
    outb(base + THR, b);
}

/// `putc` every byte of `s`.
pub fn puts(base: u16, s: &[u8]) {
    for &b in s {
        putc(base, b);
    }
}

/// Wait for a received byte on the UART at `base` (poll LSR.DR) and read it.
pub fn getc(base: u16) -> u8 {
    while inb(base + LSR) & LSR_DR == 0 {}
    inb(base + THR)
}

/// End the VM with `status`: a 1-byte write to the debug-exit port. A VMM
/// without that device falls through to the i8042 reset, and then we halt
/// forever with interrupts off.
pub fn exit(status: u8) -> ! {
    exit_width(status, 1)
}

/// Like [`exit`], with an `outw` (`width` 2) or `outl` (4) of `status`,
/// its upper bytes set to show that only the low byte counts.
pub fn exit_width(status: u8, width: u8) -> ! {
    match width {
        2 => outw(DEBUG_EXIT, 0xa500 | u16::from(status)),
        4 => outl(DEBUG_EXIT, 0xa5a5_a500 | u32::from(status)),
        _ => outb(DEBUG_EXIT, status),
    }
    outb(I8042_CMD, 0xfe);
    halt_forever()
}

/// `cli; hlt` in a loop.
pub fn halt_forever() -> ! {
    // SAFETY: halting touches no memory and never returns.
    unsafe { asm!("cli", "2: hlt", "jmp 2b", options(noreturn, nomem, nostack)) }
}

/// Format `v` in decimal into `buf`, returning the digits.
pub fn fmt_u64(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}
