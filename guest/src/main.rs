//! kvmini tiny guest.
//!
//! A freestanding x86_64 kernel (no std, no libc, no interrupts) that kvmini
//! embeds as its default kernel and its tests boot in every mode below. It is
//! built by ../../build.rs with the host's stock rustc (no extra target) into
//! an ELF64 ET_EXEC loaded at 0x100000, bootable two ways (see boot.S):
//! the Linux 64-bit boot protocol (rsi = boot_params) and PVH (32-bit entry
//! from a Xen ELF note, ebx = hvm_start_info), e.g. `qemu -M microvm -kernel`;
//! its multiboot build (an ELF32 copy, see build.rs) enters through the
//! multiboot header (eax = 0x2BADB002, ebx = the information structure).
//!
//! Modes (first mode word on the command line wins; default `hello`):
//!   hello       "kvmini tiny guest\nmemory: <M> MiB\ncmdline: <cmdline>\n", exit 0
//!               (M = RAM entries summed, rounded up to MiB; `rep outsb` per piece)
//!   exit=N      exit with status N (0..=255), no output; `exit-width=2` or
//!               `=4` writes it with outw or outl (upper bytes 0xa5)
//!   echo        "echo ready\n", then echo COM1 input back until Ctrl-D (0x04), exit 0
//!               (a CR comes back as CR LF)
//!   flood=N     N pattern bytes on COM1 (seed=S), LSR-polled per byte, exit 0;
//!               with `then-spin`: "\nflood done\n", then spin (no exit at all)
//!   fault       triple fault (IDT limit 0, then ud2)
//!   spin        `jmp .` forever, no exits
//!   halt        `cli; hlt` forever
//!   pagetable   zero the live PML4, then keep executing: triple fault
//!   com2        "kvmini tiny guest: COM2\n" on COM2, "com2 done\n" on COM1, exit 0
//!   reboot      "rebooting\n", then reset through the i8042 (`out 0x64, 0xfe`)
//!   fresh       checks that this boot starts as a first one does (RAM at 0x80000
//!               zero, IA32_SYSENTER_CS 0, COM1's scratch register 0), marks all
//!               three, then "fresh boot\n" and resets like `reboot`; a mark
//!               left by an earlier boot: "stale <what>\n", exit 3
//!   poweroff    "powering off\n", then ACPI S5: SLP_TYP=5|SLP_EN to PM1a_CNT (0x604)
//!   panic       prints Linux's panic banner, then resets like Linux with panic=-1
//!   post        writes POST codes 0x01, 0x02, 0x03 to port 0x80, exit 0
//!   blk         a virtio-blk driver: capacity, sector 0, writes, flushes and
//!               reads back sector 1, a read past the end (see blk.rs), exit 0
//!   p9          a 9P2000.L client of the first --share: reads hello.txt, walks
//!               `..` of the root and a path as a name, writes guest.txt (see
//!               p9.rs), exit 0
//!   loopback    "loopback on\n", then COM1 in loopback (MCR bit 4) for 20000
//!               scratch-register reads, then silently echoes like `echo`
//!   chaos=SEED  hostile I/O (ops=N, default 400), then "\nchaos <SEED> done\n", exit 0
//!               (or "\nchaos <SEED> scratch mismatch\n", exit 1)
//!   mbinfo      the multiboot information, each module's size, address and FNV-1a
//!               hash, fw_cfg's CPU count and RAM, the RSDT's tables and the PM
//!               timer (see mbinfo.rs); exit 0 (3 when not booted by multiboot)
//!   debug[=N]   a target for gdb (see debug.rs): N calls (default 3) of
//!               kvmini_debug_point, each counting in kvmini_debug_counter,
//!               then kvmini_debug_banner on COM1, exit 3
//!   ktap=SPEC   a KTAP report as SPEC describes it (p pass, f fail, s skip,
//!               (...) a suite, ! stop there; see ktap.rs), then exit 0 or
//!               what ktap-end=exit|poweroff|fault|panic|spin says; `tap13`
//!               for kselftest's TAP 13, `stamp` for printk timestamps
//! Exit status N = 1-byte `out 0xf4` (isa-debug-exit; QEMU reports (N<<1)|1),
//! falling back to an i8042 reset (`out 0x64, 0xfe`) and then `cli; hlt`.

#![no_std]
#![no_main]

mod blk;
mod bootinfo;
mod chaos;
mod cmdline;
mod debug;
mod io;
mod ktap;
mod mbinfo;
mod mem;
mod p9;

use core::arch::{asm, global_asm};

use cmdline::Mode;
use io::{COM1, COM2};

global_asm!(include_str!("boot.S"), options(att_syntax));

/// Called once by boot.S on the guest's own stack, in long mode, IF=0.
/// `info` is the boot_params (kind 0) or hvm_start_info (kind 1) address.
#[no_mangle]
pub extern "C" fn kvmini_main(info: u64, kind: u64) -> ! {
    // SAFETY: boot.S passes exactly what the boot protocol handed it.
    let boot = unsafe { bootinfo::BootInfo::read(info, kind) };
    let args = cmdline::parse(boot.cmdline);
    match args.mode {
        Mode::Hello => hello(&boot),
        Mode::Exit(n) => io::exit_width(n, args.exit_width),
        Mode::Echo => echo(),
        Mode::Flood(n) => flood(n, args.seed, args.then_spin),
        Mode::Fault => fault(),
        Mode::Spin => spin(),
        Mode::Halt => io::halt_forever(),
        Mode::PageTable => pagetable(),
        Mode::Com2 => com2(),
        Mode::ExecIo => exec_io(),
        Mode::Chaos(seed) => chaos::run(seed, args.ops),
        Mode::Reboot => reboot(b"rebooting\n"),
        Mode::Fresh => fresh(),
        Mode::PowerOff => poweroff(),
        Mode::Panic => reboot(b"Kernel panic - not syncing: tiny guest asked for it\n"),
        Mode::Post => post(),
        Mode::Blk => blk::run(),
        Mode::P9 => p9::run(),
        Mode::Loopback => loopback(),
        Mode::MbInfo => mbinfo::run(&boot),
        Mode::Debug(n) => debug::run(n),
        Mode::Ktap => {
            let style = ktap::Style {
                tap13: args.tap13,
                stamp: args.stamp,
            };
            ktap::report(args.ktap, style);
            match args.ktap_end {
                cmdline::KtapEnd::Exit => io::exit(0),
                cmdline::KtapEnd::PowerOff => poweroff(),
                cmdline::KtapEnd::Fault => fault(),
                cmdline::KtapEnd::Panic => {
                    reboot(b"Kernel panic - not syncing: tiny guest asked for it\n")
                }
                cmdline::KtapEnd::Spin => spin(),
            }
        }
    }
}

/// The banner, one `rep outsb` per piece, straight from where each piece
/// already lies: no buffer to fill, no LSR polling. On a KVM that emulates
/// every guest instruction (see the README), each instruction saved here is
/// a microsecond off the whole VM's lifetime.
fn hello(boot: &bootinfo::BootInfo) -> ! {
    let mib = boot.ram_bytes.div_ceil(1 << 20);
    let mut digits = [0u8; 20];
    io::rep_outs(COM1, 1, b"kvmini tiny guest\nmemory: ");
    io::rep_outs(COM1, 1, io::fmt_u64(mib, &mut digits));
    io::rep_outs(COM1, 1, b" MiB\ncmdline: ");
    io::rep_outs(COM1, 1, boot.cmdline);
    io::rep_outs(COM1, 1, b"\n");
    io::exit(0)
}

/// Puts COM1 in loopback for a while right after saying so, then echoes:
/// input offered meanwhile must still arrive once loopback is off.
fn loopback() -> ! {
    io::puts(COM1, b"loopback on\n");
    io::outb(COM1 + io::MCR, io::inb(COM1 + io::MCR) | MCR_LOOP);
    for _ in 0..20000 {
        io::inb(COM1 + io::SCR);
    }
    io::outb(COM1 + io::MCR, io::inb(COM1 + io::MCR) & !MCR_LOOP);
    // Silent from here until input comes: only LSR polls, nothing that
    // would wake the console by itself.
    echo_loop()
}

/// MCR bit 4: loopback.
const MCR_LOOP: u8 = 0x10;

fn echo() -> ! {
    io::puts(COM1, b"echo ready\n");
    echo_loop()
}

/// Echoes COM1 input back until Ctrl-D, then exits 0.
fn echo_loop() -> ! {
    loop {
        match io::getc(COM1) {
            0x04 => io::exit(0), // Ctrl-D
            // Enter on a terminal sends a bare CR: echoed as CR LF, each
            // typed line stays on its own line.
            b'\r' => io::puts(COM1, b"\r\n"),
            b => io::putc(COM1, b),
        }
    }
}

/// Flood pattern (tests re-implement it byte for byte):
///   state = seed ^ 0x9E37_79B9_7F4A_7C15
///   for i in 0..n:
///     if i % 65 == 64: emit b'\n'
///     else: state ^= state << 13; state ^= state >> 7; state ^= state << 17
///           emit b'a' + (state % 26)          (u64, shifts drop bits)
/// Each byte is preceded by a 1-byte LSR read polling THRE, like a driver.
fn flood(n: u64, seed: u64, then_spin: bool) -> ! {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    for i in 0..n {
        let b = if i % 65 == 64 {
            b'\n'
        } else {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b'a' + (state % 26) as u8
        };
        io::putc(COM1, b);
    }
    if then_spin {
        for &b in b"\nflood done\n" {
            io::putc(COM1, b);
        }
        spin()
    }
    io::exit(0)
}

/// An IDT descriptor (lidt operand).
#[repr(C, packed)]
struct Idtr {
    limit: u16,
    base: u64,
}

/// Load an empty IDT and raise #UD: delivering it fails (#GP), delivering
/// that fails (#DF), and that fails too: triple fault, VM shutdown.
fn fault() -> ! {
    static EMPTY_IDT: Idtr = Idtr { limit: 0, base: 0 };
    // SAFETY: deliberately crashes the guest; nothing after it runs.
    unsafe { asm!("lidt [{}]", "ud2", in(reg) &EMPTY_IDT, options(noreturn, nostack)) }
}

/// Loop forever without a single exit.
fn spin() -> ! {
    // SAFETY: an empty loop touches nothing.
    unsafe { asm!("2: jmp 2b", options(noreturn, nomem, nostack)) }
}

/// Zero the live top-level page table (CR3 is identity-mapped), flush the
/// TLB by reloading CR3 and store to memory: the very next fetch faults, and
/// so does every attempt to deliver that fault: triple fault.
fn pagetable() -> ! {
    // SAFETY: deliberately destroys the address space; nothing after it runs.
    unsafe {
        asm!(
            "mov rdx, cr3",
            "and rdx, -4096", // PML4 physical (== virtual) address
            "mov rdi, rdx",
            "mov ecx, 512",
            "xor eax, eax",
            "rep stosq",                // zero all 512 PML4 entries
            "mov cr3, rdx",             // flush the TLB
            "mov qword ptr [rdx], rax", // touch memory (faults, if the fetch did not)
            "2: jmp 2b",
            options(noreturn, nostack)
        )
    }
}

/// Prints `msg`, then pulses the CPU reset line through the i8042.
fn reboot(msg: &[u8]) -> ! {
    io::puts(COM1, msg);
    io::outb(0x64, 0xfe);
    io::halt_forever()
}

/// See `fresh` in the mode list: what a reboot in place must reset.
fn fresh() -> ! {
    const MARK_ADDR: u64 = 0x8_0000;
    const MARK: u64 = 0x6b76_6d69_6e69_2121;
    const SYSENTER_CS: u32 = 0x174;
    const SCRATCH: u16 = 7;
    let mark = MARK_ADDR as *mut u64;
    // SAFETY: 0x80000 is guest RAM that kvmini leaves unused (below the
    // EBDA, above the command line), identity-mapped by its page tables.
    let stale_memory = unsafe { core::ptr::read_volatile(mark) } != 0;
    let stale_msr = rdmsr(SYSENTER_CS) != 0;
    let stale_uart = io::inb(COM1 + SCRATCH) != 0;
    for (stale, what) in [
        (stale_memory, &b"memory"[..]),
        (stale_msr, b"msr"),
        (stale_uart, b"uart"),
    ] {
        if stale {
            io::puts(COM1, b"stale ");
            io::puts(COM1, what);
            io::puts(COM1, b"\n");
            io::exit(3);
        }
    }
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(mark, MARK) };
    wrmsr(SYSENTER_CS, 0x10);
    io::outb(COM1 + SCRATCH, 0x5a);
    reboot(b"fresh boot\n")
}

fn rdmsr(index: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reads an architectural MSR at CPL 0; touches no memory.
    unsafe {
        asm!("rdmsr", in("ecx") index, out("eax") lo, out("edx") hi,
             options(nomem, nostack, preserves_flags))
    };
    u64::from(hi) << 32 | u64::from(lo)
}

fn wrmsr(index: u32, value: u64) {
    // SAFETY: writes an architectural MSR at CPL 0; touches no memory.
    unsafe {
        asm!("wrmsr", in("ecx") index, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nomem, nostack, preserves_flags))
    };
}

/// ACPI poweroff the way Linux does it with kvmini's FADT: SLP_TYP of \_S5
/// (5) in bits 10..12 of PM1a_CNT, then the same with SLP_EN (bit 13).
fn poweroff() -> ! {
    const PM1A_CNT: u16 = 0x604;
    io::puts(COM1, b"powering off\n");
    io::outw(PM1A_CNT, 5 << 10);
    io::outw(PM1A_CNT, (5 << 10) | (1 << 13));
    io::halt_forever()
}

/// Boot markers for `--boot-trace`.
fn post() -> ! {
    for code in 1..=3u8 {
        io::outb(0x80, code);
    }
    io::exit(0)
}

/// What `--exec`'s guest init sends on COM2 (guest/exec-init.rs): stdout,
/// a switch to stderr (DLE 'e'), back to stdout (DLE 'o'), an escaped DLE
/// (DLE DLE) and an unknown control (DLE 'x', dropped); then status 3.
fn exec_io() -> ! {
    io::puts(
        COM2,
        b"to stdout\n\x10eto stderr\n\x10odle:\x10\x10\n\x10xend\n",
    );
    io::exit(3)
}

fn com2() -> ! {
    io::puts(COM2, b"kvmini tiny guest: COM2\n");
    io::puts(COM1, b"com2 done\n");
    io::exit(0)
}

/// libcore is prebuilt with unwinding, so its (discarded) unwind tables name
/// the personality routine. With panic=abort nothing ever calls it.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    io::puts(COM1, b"kvmini tiny guest: panic\n");
    io::exit(255)
}
