//! `/init` of the initramfs kvmini builds for `--exec`: a static Linux
//! program with no libc (raw system calls), so that it runs on any x86_64
//! kernel whatever the host's userland is.
//!
//! What it guarantees, in order:
//! 1. Loads the modules kvmini listed in `/kvmini/modules` (the 9p and
//!    virtio-mmio modules and what they depend on), already-loaded ones
//!    (EEXIST) being fine.
//! 2. Mounts the host's `/` (tag `kvmini-root`) read-only on /newroot, the
//!    kernel's own proc, sysfs, devtmpfs, devpts and tmpfs (/tmp, /run,
//!    /var/tmp, /dev/shm) over it, then every share of `/kvmini/mounts` at
//!    its host path (the current directory, `--share` directories), and
//!    makes /newroot the root (MS_MOVE, chroot).
//! 3. Runs `/bin/sh -c COMMAND` in the current directory with the
//!    environment of `/kvmini/env`. In `pipe` mode its stdin is /dev/null
//!    and its stdout and stderr are pipes that init relays to ttyS1 framed
//!    (DLE 'o' switches to stdout, DLE 'e' to stderr, DLE DLE is a literal
//!    DLE), the tty in raw mode so the bytes arrive exact; in `tty` mode the
//!    command gets ttyS1 as its controlling terminal.
//! 4. When the command has exited and its output is drained to the UART
//!    (tcdrain), writes its status (the exit code, 128+N for signal N) to
//!    the debug-exit port 0xf4: kvmini's exit status. Anything that fails
//!    before the command runs is reported on stderr as `kvmini-init: ...`
//!    and ends with status 125.

#![no_std]
#![no_main]

use core::arch::{asm, global_asm};

#[allow(dead_code)]
#[path = "src/mem.rs"]
mod mem;

global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "and rsp, -16",
    "call init_main",
    "ud2",
);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    fail(b"internal error", 0)
}

/// Referenced by the precompiled libcore (built to unwind); never called,
/// since everything here aborts on panic.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

// ---- system calls -------------------------------------------------------

const SYS_READ: usize = 0;
const SYS_WRITE: usize = 1;
const SYS_CLOSE: usize = 3;
const SYS_POLL: usize = 7;
const SYS_IOCTL: usize = 16;
const SYS_DUP2: usize = 33;
const SYS_NANOSLEEP: usize = 35;
const SYS_FORK: usize = 57;
const SYS_EXECVE: usize = 59;
const SYS_EXIT: usize = 60;
const SYS_WAIT4: usize = 61;
const SYS_FCNTL: usize = 72;
const SYS_CHDIR: usize = 80;
const SYS_MKDIR: usize = 83;
const SYS_SETSID: usize = 112;
const SYS_CHROOT: usize = 161;
const SYS_SYNC: usize = 162;
const SYS_MOUNT: usize = 165;
const SYS_IOPL: usize = 172;
const SYS_OPENAT: usize = 257;
const SYS_PIPE2: usize = 293;
const SYS_FINIT_MODULE: usize = 313;

const AT_FDCWD: isize = -100;
const O_RDONLY: usize = 0;
const O_RDWR: usize = 2;
const O_NOCTTY: usize = 0o400;
const O_NONBLOCK: usize = 0o4000;
const O_CLOEXEC: usize = 0o2000000;
const F_SETFL: usize = 4;
const MS_RDONLY: usize = 1;
const MS_NOSUID: usize = 2;
const MS_NODEV: usize = 4;
const MS_MOVE: usize = 8192;
const MODULE_INIT_COMPRESSED_FILE: usize = 4;
const TCGETS: usize = 0x5401;
const TCSETS: usize = 0x5402;
const TCSBRK: usize = 0x5409;
const TIOCSCTTY: usize = 0x540e;
const TIOCSWINSZ: usize = 0x5414;
const WNOHANG: usize = 1;
const POLLIN: i16 = 1;
const EINTR: isize = 4;
const ENOENT: isize = 2;
const EAGAIN: isize = 11;
const EEXIST: isize = 17;

/// The status for "the command never ran" (as env(1) and chroot(1) use it).
const SETUP_FAILED: u8 = 125;
const DEBUG_EXIT_PORT: u16 = 0xf4;
const DLE: u8 = 0x10;

unsafe fn syscall(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize) -> isize {
    let ret: isize;
    // SAFETY: the caller passes arguments valid for system call `n`.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a, in("rsi") b,
             in("rdx") c, in("r10") d, in("r8") e, lateout("rcx") _, lateout("r11") _,
             options(nostack));
    }
    ret
}

fn sys(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize) -> Result<usize, isize> {
    // SAFETY: every caller below passes pointers to live, NUL-terminated
    // strings or buffers of the stated size.
    let r = unsafe { syscall(n, a, b, c, d, e) };
    if r < 0 {
        Err(-r)
    } else {
        Ok(r as usize)
    }
}

/// A NUL-terminated string's address (every path here carries its NUL).
fn c(s: &[u8]) -> usize {
    debug_assert!(s.last() == Some(&0));
    s.as_ptr() as usize
}

fn open(path: &[u8], flags: usize) -> Result<usize, isize> {
    sys(SYS_OPENAT, AT_FDCWD as usize, c(path), flags | O_CLOEXEC, 0, 0)
}

fn close(fd: usize) {
    let _ = sys(SYS_CLOSE, fd, 0, 0, 0, 0);
}

fn write_all(fd: usize, mut buf: &[u8]) {
    while !buf.is_empty() {
        match sys(SYS_WRITE, fd, buf.as_ptr() as usize, buf.len(), 0, 0) {
            Ok(n) => buf = &buf[n..],
            Err(EINTR) => {}
            Err(_) => return,
        }
    }
}

fn mount(src: &[u8], target: &[u8], fstype: &[u8], flags: usize, data: &[u8]) -> Result<(), isize> {
    sys(SYS_MOUNT, c(src), c(target), c(fstype), flags, c(data)).map(|_| ())
}

fn sleep_ms(ms: usize) {
    let ts = [0usize, ms * 1_000_000];
    let _ = sys(SYS_NANOSLEEP, ts.as_ptr() as usize, 0, 0, 0, 0);
}

fn exit(code: usize) -> ! {
    let _ = sys(SYS_EXIT, code, 0, 0, 0, 0);
    loop {}
}

// ---- reporting ----------------------------------------------------------

/// ttyS1, once open: where stderr messages go (framed in pipe mode).
static mut TTY: usize = usize::MAX;
static mut PIPE_MODE: bool = true;

fn tty() -> usize {
    // SAFETY: init is single-threaded; the child only reads it.
    unsafe { TTY }
}

fn errno_name(e: isize) -> &'static [u8] {
    match e {
        1 => b"EPERM",
        2 => b"ENOENT (no such file, or no 9p device with that tag)",
        5 => b"EIO",
        8 => b"ENOEXEC (not a module for this kernel)",
        12 => b"ENOMEM",
        13 => b"EACCES",
        19 => b"ENODEV (the kernel lacks this filesystem)",
        20 => b"ENOTDIR",
        22 => b"EINVAL",
        30 => b"EROFS",
        38 => b"ENOSYS",
        61 => b"ENODATA",
        95 => b"EOPNOTSUPP",
        _ => b"an error",
    }
}

fn fmt_num(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Prints `kvmini-init: WHAT[: NAME (errno N)]` on the command's stderr.
fn report(what: &[u8], detail: &[u8], err: isize) {
    let fd = if tty() == usize::MAX { 1 } else { tty() };
    // SAFETY: single-threaded.
    if unsafe { PIPE_MODE } && tty() != usize::MAX {
        write_all(fd, &[DLE, b'e']);
    }
    write_all(fd, b"kvmini-init: ");
    write_all(fd, what);
    if !detail.is_empty() {
        write_all(fd, b" ");
        write_all(fd, strip_nul(detail));
    }
    if err != 0 {
        let mut num = [0u8; 20];
        write_all(fd, b": ");
        write_all(fd, errno_name(err));
        write_all(fd, b" (errno ");
        write_all(fd, fmt_num(err as usize, &mut num));
        write_all(fd, b")");
    }
    write_all(fd, b"\r\n");
}

fn strip_nul(s: &[u8]) -> &[u8] {
    match s.iter().position(|&b| b == 0) {
        Some(i) => &s[..i],
        None => s,
    }
}

fn fail(what: &[u8], err: isize) -> ! {
    fail_at(what, b"", err)
}

fn fail_at(what: &[u8], detail: &[u8], err: isize) -> ! {
    report(what, detail, err);
    finish(SETUP_FAILED)
}

/// Drains ttyS1 and reports `status` to kvmini through the debug-exit port.
fn finish(status: u8) -> ! {
    if tty() != usize::MAX {
        // tcdrain: returns once the UART has sent everything.
        let _ = sys(SYS_IOCTL, tty(), TCSBRK, 1, 0, 0);
    }
    let _ = sys(SYS_SYNC, 0, 0, 0, 0, 0);
    if sys(SYS_IOPL, 3, 0, 0, 0, 0).is_ok() {
        // SAFETY: iopl(3) allows port I/O; 0xf4 is kvmini's debug-exit port,
        // which ends the VM with this status.
        unsafe {
            asm!("out dx, al", in("dx") DEBUG_EXIT_PORT, in("al") status, options(nostack));
        }
    }
    // Not under kvmini (no debug-exit port): the kernel panics when init
    // exits, which is the best signal left.
    exit(status as usize)
}

// ---- configuration ------------------------------------------------------

/// A file of the initramfs read whole into `buf`; returns its length.
fn read_file(path: &[u8], buf: &mut [u8]) -> usize {
    let fd = match open(path, O_RDONLY) {
        Ok(fd) => fd,
        Err(e) => fail_at(b"cannot open", path, e),
    };
    let mut len = 0;
    loop {
        if len == buf.len() {
            fail_at(b"file too large:", path, 0);
        }
        match sys(SYS_READ, fd, buf[len..].as_mut_ptr() as usize, buf.len() - len, 0, 0) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(EINTR) => {}
            Err(e) => fail_at(b"cannot read", path, e),
        }
    }
    close(fd);
    len
}

/// The NUL-terminated records of `buf[..len]`, each with its NUL.
fn records(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = buf;
    core::iter::from_fn(move || {
        let end = rest.iter().position(|&b| b == 0)?;
        let (rec, tail) = rest.split_at(end + 1);
        rest = tail;
        Some(rec)
    })
}

static mut CMD: [u8; 128 * 1024] = [0; 128 * 1024];
static mut ENV: [u8; 64 * 1024] = [0; 64 * 1024];
static mut MOUNTS: [u8; 16 * 1024] = [0; 16 * 1024];
static mut MODULES: [u8; 8 * 1024] = [0; 8 * 1024];
static mut CWD: [u8; 4096] = [0; 4096];
static mut MODE: [u8; 64] = [0; 64];
static mut PATH: [u8; 4200] = [0; 4200];
static mut RELAY: [u8; 4096] = [0; 4096];
static mut FRAMED: [u8; 8200] = [0; 8200];

/// `prefix` + `path` (NUL-terminated) in the scratch buffer.
fn join<'a>(scratch: &'a mut [u8], prefix: &[u8], path: &[u8]) -> &'a [u8] {
    let path = strip_nul(path);
    let n = prefix.len() + path.len();
    if n + 1 > scratch.len() {
        fail_at(b"path too long:", path, 0);
    }
    scratch[..prefix.len()].copy_from_slice(prefix);
    scratch[prefix.len()..n].copy_from_slice(path);
    scratch[n] = 0;
    &scratch[..n + 1]
}

// ---- steps --------------------------------------------------------------

fn load_modules(list: &[u8]) {
    for path in records(list) {
        let fd = match open(path, O_RDONLY) {
            Ok(fd) => fd,
            Err(e) => fail_at(b"cannot open module", path, e),
        };
        let name = strip_nul(path);
        let compressed = [&b".xz"[..], b".zst", b".gz"]
            .iter()
            .any(|ext| name.ends_with(ext));
        let flags = if compressed { MODULE_INIT_COMPRESSED_FILE } else { 0 };
        match sys(SYS_FINIT_MODULE, fd, c(b"\0"), flags, 0, 0) {
            Ok(_) | Err(EEXIST) => {}
            Err(e) => fail_at(b"cannot load module", path, e),
        }
        close(fd);
    }
}

/// Every share is mounted with cache=mmap: no dentry or page cache beyond
/// what mmap needs, so the guest holds a server fid only for what is in
/// use (cache=loose keeps one per cached dentry, and a `find /usr` would
/// meet kvmini's per-share fid limit).
const P9_OPTS: &[u8] = b"trans=virtio,version=9p2000.L,msize=65560,cache=mmap\0";

fn mount_9p(tag: &[u8], target: &[u8], flags: usize, opts: &[u8]) {
    // virtio devices probe as their drivers load, so the tag is there
    // already; the retries only cover a slow probe.
    for attempt in 0.. {
        match mount(tag, target, b"9p\0", flags, opts) {
            Ok(()) => return,
            Err(ENOENT) if attempt < 100 => sleep_ms(10),
            Err(e) => fail_at(b"cannot mount the 9p share", tag, e),
        }
    }
}

fn mkdir(path: &[u8]) {
    let _ = sys(SYS_MKDIR, c(path), 0o755, 0, 0, 0);
}

/// Makes `path` (NUL-terminated, absolute) and its parents where they are
/// missing: a share under /tmp or /run lands in the tmpfs mounted there,
/// which hides the host's directory of that name.
fn mkdir_p(path: &mut [u8]) {
    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    for i in 1..=end {
        if i == end || path[i] == b'/' {
            let saved = path[i];
            path[i] = 0;
            let _ = sys(SYS_MKDIR, path.as_ptr() as usize, 0o755, 0, 0, 0);
            path[i] = saved;
        }
    }
}

fn mount_system(target: &[u8], fstype: &[u8], flags: usize, data: &[u8], required: bool) {
    match mount(fstype, target, fstype, flags, data) {
        Ok(()) => {}
        Err(ENOENT) if !required => {}
        Err(e) => fail_at(b"cannot mount", target, e),
    }
}

fn set_raw(fd: usize) {
    let mut t = [0u8; 60];
    if sys(SYS_IOCTL, fd, TCGETS, t.as_mut_ptr() as usize, 0, 0).is_err() {
        return;
    }
    // c_iflag, c_oflag, c_cflag, c_lflag, as cfmakeraw sets them.
    let masks: [(u32, u32); 4] = [
        (0o1 | 0o2 | 0o10 | 0o40 | 0o100 | 0o200 | 0o400 | 0o2000, 0),
        (0o1, 0),
        (0o60 | 0o400, 0o60),
        (0o10 | 0o100 | 0o2 | 0o1 | 0o100000, 0),
    ];
    for (k, (clear, add)) in masks.iter().enumerate() {
        let at = 4 * k;
        let v = u32::from_ne_bytes([t[at], t[at + 1], t[at + 2], t[at + 3]]);
        t[at..at + 4].copy_from_slice(&((v & !clear) | add).to_ne_bytes());
    }
    let _ = sys(SYS_IOCTL, fd, TCSETS, t.as_ptr() as usize, 0, 0);
}

/// `tty ROWS COLS`: the host terminal's size for ttyS1.
fn set_winsize(fd: usize, mode: &[u8]) {
    let mut nums = [0u16; 2];
    let mut words = mode.split(|&b| b == b' ').skip(1);
    for n in nums.iter_mut() {
        let Some(w) = words.next() else { return };
        for &d in strip_nul(w) {
            if d.is_ascii_digit() {
                *n = n.saturating_mul(10).saturating_add(u16::from(d - b'0'));
            }
        }
    }
    let ws = [nums[0], nums[1], 0, 0];
    let _ = sys(SYS_IOCTL, fd, TIOCSWINSZ, ws.as_ptr() as usize, 0, 0);
}

/// Relays `data` from stream `which` (b'o' or b'e') to ttyS1, framed.
fn relay(which: u8, data: &[u8], current: &mut u8) {
    // SAFETY: single-threaded; FRAMED holds twice RELAY plus a switch.
    let framed = unsafe { &mut *core::ptr::addr_of_mut!(FRAMED) };
    let mut n = 0;
    if *current != which {
        framed[0] = DLE;
        framed[1] = which;
        n = 2;
        *current = which;
    }
    for &b in data {
        if b == DLE {
            framed[n] = DLE;
            n += 1;
        }
        framed[n] = b;
        n += 1;
    }
    write_all(tty(), &framed[..n]);
}

fn wait_status(raw: u32) -> u8 {
    let sig = raw & 0x7f;
    if sig == 0 {
        ((raw >> 8) & 0xff) as u8
    } else {
        (128 + sig) as u8
    }
}

#[no_mangle]
extern "C" fn init_main() -> ! {
    // SAFETY: init is single-threaded until fork, and the child only
    // reads these buffers before execve.
    let (cmd, env, mounts, modules, cwd, mode) = unsafe {
        (
            &mut *core::ptr::addr_of_mut!(CMD),
            &mut *core::ptr::addr_of_mut!(ENV),
            &mut *core::ptr::addr_of_mut!(MOUNTS),
            &mut *core::ptr::addr_of_mut!(MODULES),
            &mut *core::ptr::addr_of_mut!(CWD),
            &mut *core::ptr::addr_of_mut!(MODE),
        )
    };
    let scratch = unsafe { &mut *core::ptr::addr_of_mut!(PATH) };
    // Everything of /kvmini is read now: the switch to the host's root
    // hides the initramfs.
    let mode_len = read_file(b"/kvmini/mode\0", mode);
    let mode = &mode[..mode_len];
    let cmd_len = read_file(b"/kvmini/cmd\0", cmd);
    let env_len = read_file(b"/kvmini/env\0", env);
    let cwd_len = read_file(b"/kvmini/cwd\0", cwd);
    let mounts_len = read_file(b"/kvmini/mounts\0", mounts);
    let modules_len = read_file(b"/kvmini/modules\0", modules);
    if cmd.get(cmd_len.wrapping_sub(1)) != Some(&0) || cwd.get(cwd_len.wrapping_sub(1)) != Some(&0) {
        fail(b"/kvmini/cmd and /kvmini/cwd must end with a NUL", 0);
    }
    let pipe_mode = !mode.starts_with(b"tty");
    // SAFETY: single-threaded.
    unsafe { PIPE_MODE = pipe_mode };

    // The command's channel first, so that every later failure is seen.
    match open(b"/dev/ttyS1\0", O_RDWR | O_NOCTTY) {
        // SAFETY: single-threaded.
        Ok(fd) => unsafe { TTY = fd },
        Err(e) => fail(b"cannot open /dev/ttyS1 (kvmini's COM2)", e),
    }
    if pipe_mode {
        set_raw(tty());
    } else {
        set_winsize(tty(), mode);
    }

    load_modules(&modules[..modules_len]);

    mount_9p(b"kvmini-root\0", b"/newroot\0", MS_RDONLY, P9_OPTS);
    mount_system(b"/newroot/proc\0", b"proc\0", MS_NOSUID | MS_NODEV, b"\0", true);
    mount_system(b"/newroot/sys\0", b"sysfs\0", MS_NOSUID | MS_NODEV, b"\0", true);
    mount_system(b"/newroot/dev\0", b"devtmpfs\0", MS_NOSUID, b"mode=0755\0", true);
    mkdir(b"/newroot/dev/pts\0");
    mkdir(b"/newroot/dev/shm\0");
    mount_system(b"/newroot/dev/pts\0", b"devpts\0", MS_NOSUID, b"ptmxmode=0666\0", false);
    mount_system(b"/newroot/dev/shm\0", b"tmpfs\0", MS_NOSUID | MS_NODEV, b"mode=1777\0", false);
    mount_system(b"/newroot/tmp\0", b"tmpfs\0", MS_NOSUID | MS_NODEV, b"mode=1777\0", true);
    mount_system(b"/newroot/run\0", b"tmpfs\0", MS_NOSUID | MS_NODEV, b"mode=0755\0", false);
    mount_system(b"/newroot/var/tmp\0", b"tmpfs\0", MS_NOSUID | MS_NODEV, b"mode=1777\0", false);

    // tag, path, ro|rw: the current directory and the --share directories.
    let mut recs = records(&mounts[..mounts_len]);
    while let (Some(tag), Some(path), Some(access)) = (recs.next(), recs.next(), recs.next()) {
        let len = join(scratch, b"/newroot", path).len();
        mkdir_p(&mut scratch[..len]);
        let target = &scratch[..len];
        let flags = if access.starts_with(b"ro") { MS_RDONLY } else { 0 };
        mount_9p(tag, target, flags, P9_OPTS);
    }

    if let Err(e) = sys(SYS_CHDIR, c(b"/newroot\0"), 0, 0, 0, 0) {
        fail(b"cannot enter /newroot", e);
    }
    if let Err(e) = mount(b".\0", b"/\0", b"\0", MS_MOVE, b"\0") {
        fail(b"cannot move /newroot to /", e);
    }
    if let Err(e) = sys(SYS_CHROOT, c(b".\0"), 0, 0, 0, 0) {
        fail(b"cannot chroot to the host's /", e);
    }
    let _ = sys(SYS_CHDIR, c(b"/\0"), 0, 0, 0, 0);
    if let Err(e) = sys(SYS_CHDIR, cwd.as_ptr() as usize, 0, 0, 0, 0) {
        fail_at(b"cannot enter the current directory", &cwd[..cwd_len], e);
    }
    run(&cmd[..cmd_len], &env[..env_len], pipe_mode)
}

/// Runs `/bin/sh -c cmd` (cmd NUL-terminated) with the environment `env`
/// (NUL-terminated records) and finishes with its status.
fn run(cmd: &[u8], env: &[u8], pipe_mode: bool) -> ! {
    let mut envp = [0usize; 256];
    let mut count = 0;
    for rec in records(env) {
        if count + 1 < envp.len() {
            envp[count] = rec.as_ptr() as usize;
            count += 1;
        }
    }
    let argv = [
        c(b"sh\0"),
        c(b"-c\0"),
        cmd.as_ptr() as usize,
        0,
    ];

    let mut out_pipe = [0i32; 2];
    let mut err_pipe = [0i32; 2];
    if pipe_mode {
        for p in [&mut out_pipe, &mut err_pipe] {
            if let Err(e) = sys(SYS_PIPE2, p.as_mut_ptr() as usize, O_CLOEXEC, 0, 0, 0) {
                fail(b"cannot make a pipe", e);
            }
        }
    }
    let child = match sys(SYS_FORK, 0, 0, 0, 0, 0) {
        Ok(pid) => pid,
        Err(e) => fail(b"cannot fork", e),
    };
    if child == 0 {
        let _ = sys(SYS_SETSID, 0, 0, 0, 0, 0);
        let (i, o, e) = if pipe_mode {
            let null = match open(b"/dev/null\0", O_RDWR) {
                Ok(fd) => fd,
                Err(e) => fail(b"cannot open /dev/null", e),
            };
            (null, out_pipe[1] as usize, err_pipe[1] as usize)
        } else {
            // Opened by a session leader without O_NOCTTY: ttyS1 becomes
            // the controlling terminal (TIOCSCTTY makes sure of it).
            let fd = match open(b"/dev/ttyS1\0", O_RDWR) {
                Ok(fd) => fd,
                Err(e) => fail(b"cannot open /dev/ttyS1", e),
            };
            let _ = sys(SYS_IOCTL, fd, TIOCSCTTY, 0, 0, 0);
            (fd, fd, fd)
        };
        for (from, to) in [(i, 0), (o, 1), (e, 2)] {
            if let Err(err) = sys(SYS_DUP2, from, to, 0, 0, 0) {
                fail(b"cannot set up the command's stdio", err);
            }
        }
        let err = sys(SYS_EXECVE, c(b"/bin/sh\0"), argv.as_ptr() as usize, envp.as_ptr() as usize, 0, 0);
        report(b"cannot run /bin/sh", b"", err.err().unwrap_or(0));
        exit(127);
    }

    let mut raw = 0u32;
    if pipe_mode {
        close(out_pipe[1] as usize);
        close(err_pipe[1] as usize);
        raw = relay_until_exit(child, out_pipe[0] as usize, err_pipe[0] as usize);
    } else {
        loop {
            match sys(SYS_WAIT4, child, &mut raw as *mut u32 as usize, 0, 0, 0) {
                Ok(pid) if pid == child => break,
                Ok(_) | Err(EINTR) => {}
                Err(e) => fail(b"cannot wait for the command", e),
            }
        }
    }
    finish(wait_status(raw))
}

/// Relays the command's output until it has exited and both pipes are
/// drained (or, if something it left running holds them, until nothing
/// more is readable at once); returns its wait status.
fn relay_until_exit(child: usize, out: usize, err: usize) -> u32 {
    // SAFETY: single-threaded.
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(RELAY) };
    let mut current = b'o';
    let mut open_fds = [Some(out), Some(err)];
    let mut status: Option<u32> = None;
    loop {
        if status.is_none() {
            let mut raw = 0u32;
            if let Ok(pid) = sys(SYS_WAIT4, child, &mut raw as *mut u32 as usize, WNOHANG, 0, 0) {
                if pid == child {
                    status = Some(raw);
                    // Whatever is left is read without waiting.
                    for fd in open_fds.iter().flatten() {
                        let _ = sys(SYS_FCNTL, *fd, F_SETFL, O_NONBLOCK, 0, 0);
                    }
                }
            }
        }
        if open_fds.iter().all(Option::is_none) {
            if let Some(s) = status {
                return s;
            }
            // Both pipes closed: the command is ending; wait for it.
            let mut raw = 0u32;
            match sys(SYS_WAIT4, child, &mut raw as *mut u32 as usize, 0, 0, 0) {
                Ok(pid) if pid == child => return raw,
                Ok(_) | Err(EINTR) => continue,
                Err(e) => fail(b"cannot wait for the command", e),
            }
        }
        // struct pollfd { int fd; short events; short revents; }
        let mut pfds = [0i64; 2];
        let mut n = 0;
        let mut which = [0u8; 2];
        for (i, fd) in open_fds.iter().enumerate() {
            if let Some(fd) = fd {
                let pfd = (*fd as u32 as u64) | ((POLLIN as u16 as u64) << 32);
                pfds[n] = pfd as i64;
                which[n] = i as u8;
                n += 1;
            }
        }
        let timeout = if status.is_some() { 0 } else { 100 };
        let ready = match sys(SYS_POLL, pfds.as_mut_ptr() as usize, n, timeout, 0, 0) {
            Ok(r) => r,
            Err(EINTR) => continue,
            Err(e) => fail(b"cannot poll the command's output", e),
        };
        if ready == 0 && status.is_some() {
            return status.unwrap_or(0);
        }
        for k in 0..n {
            let revents = (pfds[k] as u64 >> 48) as u16;
            if revents == 0 {
                continue;
            }
            let i = which[k] as usize;
            let Some(fd) = open_fds[i] else { continue };
            match sys(SYS_READ, fd, buf.as_mut_ptr() as usize, buf.len(), 0, 0) {
                Ok(0) => {
                    close(fd);
                    open_fds[i] = None;
                }
                Ok(len) => relay(if i == 0 { b'o' } else { b'e' }, &buf[..len], &mut current),
                Err(EINTR) | Err(EAGAIN) => {}
                Err(_) => {
                    close(fd);
                    open_fds[i] = None;
                }
            }
        }
    }
}
