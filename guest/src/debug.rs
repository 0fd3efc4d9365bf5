//! `debug[=N]`: what the gdb tests break on, step through and watch. The
//! names are unmangled so that gdb finds them in the tiny guest's ELF
//! (build.rs keeps the linked image, symbols and all, next to the
//! embedded one).

use core::ptr::{addr_of, addr_of_mut};

use crate::io::{self, COM1};

/// Counts the calls of [`kvmini_debug_point`]: the watchpoint test's
/// variable.
#[no_mangle]
pub static mut kvmini_debug_counter: u64 = 0;

/// Read with gdb's `x/s`; printed at the end.
#[no_mangle]
pub static kvmini_debug_banner: [u8; 20] = *b"kvmini debug target\0";

/// The breakpoint test's function: one call a round.
#[no_mangle]
#[inline(never)]
pub extern "C" fn kvmini_debug_point(round: u64) -> u64 {
    // SAFETY: one vCPU runs this mode; the volatile accesses are what a
    // watchpoint sees.
    unsafe {
        let c = addr_of_mut!(kvmini_debug_counter);
        c.write_volatile(c.read_volatile() + 1);
        c.read_volatile() + round
    }
}

pub fn run(rounds: u64) -> ! {
    let mut sum = 0u64;
    for round in 1..=rounds {
        // black_box: each call happens, in order.
        sum = sum.wrapping_add(kvmini_debug_point(core::hint::black_box(round)));
    }
    core::hint::black_box(sum);
    // SAFETY: a static that is only read.
    let banner = unsafe { &*addr_of!(kvmini_debug_banner) };
    io::rep_outs(COM1, 1, &banner[..banner.len() - 1]);
    io::rep_outs(COM1, 1, b"\n");
    io::exit(3)
}
