//! The last ways out: a failed allocation or a panic, on any thread, ends
//! kvmini with one `kvmini:` line and the terminal as it was found, making
//! only calls that every thread's seccomp filter allows (write(2) on
//! stderr, TCSETS on fd 0, exit_group).
//!
//! Rust's own allocation-failure path prints its message and aborts: the
//! abort raises SIGABRT (and, with backtraces, asks for the working
//! directory), which a confined thread's filter answers with SIGSYS, and
//! which leaves a raw terminal raw. [`Allocator`] stops that path before it
//! starts: a heap allocation that fails ends the process here instead.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{console, status};

/// The system allocator, except that an allocation it cannot satisfy ends
/// kvmini with status 1 ("out of memory") instead of returning null.
/// kvmini has no use for fallible heap allocation: guest memory is mapped
/// directly, and everything on the heap is small next to it.
pub struct Allocator;

// SAFETY: every call is passed to the system allocator unchanged; only a
// null result is intercepted, and then the process ends without returning.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`, passed on.
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            out_of_memory(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc_zeroed`, passed on.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            out_of_memory(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc`, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            out_of_memory(new_size);
        }
        p
    }
}

/// Ends the process: "kvmini: error: out of memory (N more bytes)", status
/// 1. Allocates nothing (the heap is what failed).
fn out_of_memory(size: usize) -> ! {
    let mut line = [0u8; 96];
    let mut n = 0;
    for part in [
        &b"kvmini: error: out of memory (could not allocate "[..],
        decimal(size, &mut [0u8; 20]),
        b" bytes)\n",
    ] {
        let take = part.len().min(line.len() - n);
        line[n..n + take].copy_from_slice(&part[..take]);
        n += take;
    }
    exit_with(&line[..n], status::INTERNAL_ERROR)
}

/// `v` in decimal, written at the end of `buf`.
fn decimal(mut v: usize, buf: &mut [u8; 20]) -> &[u8] {
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

/// Restores the terminal, writes `line` (newline included) to stderr in
/// one write(2) and ends the process with `code`, running no exit handler.
pub fn exit_with(line: &[u8], code: u8) -> ! {
    // One way out, one line: when two threads fail at once (both out of
    // memory, say), the second waits for the first to end the process.
    static LEAVING: AtomicU32 = AtomicU32::new(0);
    if LEAVING.swap(1, Ordering::SeqCst) != 0 {
        loop {
            // SAFETY: futex(2) FUTEX_WAIT on a static word that stays 1:
            // sleeps until the process ends (a wake-up only loops).
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    LEAVING.as_ptr(),
                    libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                    1u32,
                    std::ptr::null::<libc::timespec>(),
                )
            };
        }
    }
    console::restore_terminal();
    // SAFETY: fd 2 and a valid buffer of line.len() bytes; a failed write
    // changes nothing about leaving.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
    // SAFETY: _exit ends the process (exit_group); nothing runs after it.
    unsafe { libc::_exit(i32::from(code)) }
}

/// The panic hook: one line naming the panic, then the internal-error
/// status. A panic is a bug in kvmini; it never shows a user a backtrace.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        // std panics where its own mappings fail (a new thread's signal
        // stack, for one): out of memory too, said as such.
        let message = info.payload_as_str().unwrap_or("");
        let line = if message.contains("Cannot allocate memory") {
            format!("kvmini: error: out of memory ({message})\n")
        } else {
            let text = info.to_string();
            let text: Vec<&str> = text.lines().map(str::trim).collect();
            format!("kvmini: internal error: {}\n", text.join(" "))
        };
        exit_with(line.as_bytes(), status::INTERNAL_ERROR);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_writes_every_digit() {
        for v in [0usize, 7, 10, 262144, usize::MAX] {
            let mut buf = [0u8; 20];
            assert_eq!(decimal(v, &mut buf), v.to_string().as_bytes());
        }
    }
}
