//! bench-spawn: runs a command from a small process, for scripts/bench.
//!
//! A child exec'd from a vfork (posix_spawn) or a fork of a big parent,
//! such as the Python process of scripts/bench, starts with that parent's
//! RSS high-water mark, which then shows in its ru_maxrss. So the bench's
//! measured runs go through this program: it forks, execs argv[1..], waits
//! for it with wait4 and writes "wall_ns utime_us stime_us maxrss_kib\n" to
//! fd 3, where wall is from just before the fork until wait4 returned.
//! Exits with the child's status (128+N for signal N), 127 when the exec
//! fails, 125 when it cannot run the command at all.
//!
//! Standard library only: the C functions it needs are declared here.

use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_long};
use std::time::Instant;

#[repr(C)]
struct Timeval {
    sec: c_long,
    usec: c_long,
}

/// struct rusage: the two times, ru_maxrss, and 13 more longs.
#[repr(C)]
struct Rusage {
    utime: Timeval,
    stime: Timeval,
    maxrss: c_long,
    rest: [c_long; 13],
}

const F_SETFD: c_int = 2;
const FD_CLOEXEC: c_int = 1;
/// The report's descriptor.
const REPORT_FD: c_int = 3;

extern "C" {
    fn fork() -> c_int;
    fn execv(path: *const c_char, argv: *const *const c_char) -> c_int;
    fn wait4(pid: c_int, status: *mut c_int, options: c_int, ru: *mut Rusage) -> c_int;
    fn fcntl(fd: c_int, cmd: c_int, arg: c_int) -> c_int;
    fn write(fd: c_int, buf: *const u8, n: usize) -> isize;
    fn _exit(code: c_int) -> !;
}

/// A timeval in microseconds (c_long is 64 bits on x86_64 Linux).
fn micros(t: &Timeval) -> c_long {
    t.sec * 1_000_000 + t.usec
}

fn main() {
    let args: Vec<CString> = std::env::args()
        .skip(1)
        .map(|a| CString::new(a).unwrap())
        .collect();
    if args.is_empty() {
        eprintln!("usage: bench-spawn PROGRAM [ARG...] (report on fd 3)");
        std::process::exit(125);
    }
    let mut argv: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: fcntl on a descriptor number has no memory effects; if fd 3
    // is not open it fails with EBADF, and the report's write fails alike.
    unsafe { fcntl(REPORT_FD, F_SETFD, FD_CLOEXEC) };
    let t0 = Instant::now();
    // SAFETY: this process has one thread, so the child's copy of the
    // address space is consistent; the child only calls execv and _exit.
    let pid = unsafe { fork() };
    if pid == 0 {
        // SAFETY: argv is a null-terminated array of pointers to the
        // NUL-terminated strings in `args`, alive until here; _exit ends
        // the child without running anything of the parent's.
        unsafe {
            execv(argv[0], argv.as_ptr());
            _exit(127);
        }
    }
    if pid < 0 {
        std::process::exit(125);
    }
    let mut status: c_int = 0;
    // SAFETY: Rusage is plain data (longs), for which all zeroes are valid.
    let mut ru: Rusage = unsafe { std::mem::zeroed() };
    // SAFETY: status and ru are valid for writes of their types, which
    // match wait4's int and struct rusage on x86_64 Linux.
    if unsafe { wait4(pid, &mut status, 0, &mut ru) } != pid {
        std::process::exit(125);
    }
    let wall = t0.elapsed().as_nanos();
    let line = format!(
        "{} {} {} {}\n",
        wall,
        micros(&ru.utime),
        micros(&ru.stime),
        ru.maxrss
    );
    // SAFETY: line is valid for reads of line.len() bytes. The report is
    // one short write to a pipe, as before; the bench checks what arrives.
    unsafe { write(REPORT_FD, line.as_ptr(), line.len()) };
    let code = if status & 0x7f == 0 {
        (status >> 8) & 0xff
    } else {
        128 + (status & 0x7f)
    };
    std::process::exit(code);
}
