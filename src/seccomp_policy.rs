//! kvmini's seccomp policy: which system calls each kind of thread may
//! make once setup is done, compiled with seccompiler. build.rs compiles it
//! into the programs kvmini embeds (see
//! src/seccomp.rs); src/seccomp.rs's tests compile it again and check that
//! the embedded programs are the same.
//!
//! The lists (why each call is needed):
//!
//! vCPU threads:
//! - ioctl, only these requests: KVM_RUN (the run loop); KVM_GET_REGS and
//!   KVM_GET_SREGS (the register dump of a crash report, and GetState);
//!   for the handle's commands (src/vcpu/handle.rs): KVM_SET_REGS,
//!   KVM_SET_SREGS, KVM_GET_FPU, KVM_SET_FPU, KVM_GET_DEBUGREGS,
//!   KVM_SET_DEBUGREGS, KVM_GET_LAPIC, KVM_SET_LAPIC, KVM_GET_MSRS,
//!   KVM_SET_MSRS, KVM_GET_MP_STATE, KVM_SET_MP_STATE, KVM_GET_VCPU_EVENTS,
//!   KVM_SET_VCPU_EVENTS (GetState and SetState, and a vCPU's reset to its
//!   first state when the guest reboots in place), KVM_SET_GUEST_DEBUG (SetGuestDebug), KVM_TRANSLATE
//!   (Translate) and KVM_KVMCLOCK_CTRL (Pause tells a kvmclock guest);
//!   TCSETS on fd 0 only (the last way out restores the terminal)
//! - write (irqfd and wake-up eventfds; log lines on stderr)
//! - futex (locks shared with the console thread; the handle's channels,
//!   with a timeout while paused)
//! - rt_sigreturn (return from the kick signal's handler), rt_sigprocmask,
//!   sigaltstack, madvise, munmap, exit (thread exit); exit_group (the
//!   panic hook ends the process with the internal-error status)
//! - mmap, mremap, brk (memory allocation, e.g. a crash report), and
//!   mprotect with PROT_READ|PROT_WRITE only (glibc grows a thread's malloc
//!   arena so)
//! - sched_yield, clock_gettime, gettid, getpid (std and log internals)
//!
//! The console (main) thread, after the VM started:
//! - poll, ppoll, read, write, readv, writev, recvfrom, sendto (console
//!   I/O: stdin, stdout, files, ptys, sockets, eventfds, the signalfd)
//! - accept4, close, fcntl (socket clients come and go)
//! - ioctl, only TCGETS, TCSETS, TCSETSW, TCSETSF and TIOCGWINSZ
//!   (isatty, restoring the terminal), FIONBIO and FIOCLEX (socket
//!   clients) and KVM_REGISTER_COALESCED_MMIO (batching COM1's writes);
//!   with `--on-reboot restart` also KVM_SET_IRQCHIP and KVM_SET_PIT2
//!   (resetting the interrupt controllers and the PIT between boots)
//! - tgkill (kicking vCPU threads), clock_nanosleep, nanosleep, sched_yield
//! - futex, mmap, mremap, munmap, brk, madvise, rt_sigreturn,
//!   rt_sigprocmask, sigaltstack, clock_gettime, gettid, getpid,
//!   restart_syscall, exit, exit_group (std, allocation, leaving)
//! - unlink, unlinkat (removing the serial socket at exit)
//! - with `--on-reboot restart` also lseek (reading the kernel and the
//!   initramfs again from the files kept open; madvise, already allowed,
//!   gives guest memory back as zeros). A reboot in place keeps the VM,
//!   its memory, its devices and every thread, so nothing is created.
//!
//! Device worker threads (a virtio-blk disk's):
//! - poll, ppoll, read, write (eventfds: stop, wake-up, queue notification,
//!   interrupt; log lines on stderr)
//! - pread64, pwrite64, fdatasync (the disk image)
//! - mprotect with PROT_READ|PROT_WRITE only (glibc grows the thread's
//!   malloc arena so: a 64 KiB request buffer did, under Linux's
//!   multi-segment requests)
//! - close (eventfds dropped when the worker ends)
//! - ioctl, only TCSETS on fd 0 (the last way out restores the terminal)
//! - futex, mmap, mremap, munmap, brk, madvise, rt_sigreturn,
//!   rt_sigprocmask, sigaltstack, sched_yield, clock_gettime, gettid,
//!   getpid, exit, exit_group (std, allocation, leaving)
//!
//! A virtio-9p share's worker thread: a device worker's calls, and what
//! the p9 server makes on the share's files, every one relative to a
//! descriptor it holds (src/devices/virtio/p9/confine.rs keeps the names
//! to one component inside the share):
//! - openat (walks with O_PATH, opens through /proc/self/fd, creates),
//!   close
//! - newfstatat, fstatfs (getattr, qids, statfs, and glibc's fstat), fstat
//!   (what older C libraries make fstat)
//! - (pread64, pwrite64 and fdatasync, as a disk's worker: read, write,
//!   fsync's datasync), ftruncate (setattr's size), fsync
//! - getdents64, lseek, fcntl (readdir: a duplicated descriptor for
//!   fdopendir, seekdir)
//! - readlinkat, mkdirat, unlinkat, renameat, linkat, fchmodat, fchownat,
//!   utimensat (readlink, mkdir, unlink, rename, link, setattr)

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// `_IOC(dir, KVMIO, nr, size)` (asm-generic/ioctl.h); build.rs has no
/// kvm-bindings, so the sizes are spelt out, and src/seccomp.rs's tests
/// check every number against kvm-bindings' structs.
const fn kvm_ioc(dir: u64, nr: u64, size: u64) -> u64 {
    const KVMIO: u64 = 0xae;
    (dir << 30) | (size << 16) | (KVMIO << 8) | nr
}
const IOC_NONE: u64 = 0;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

// ioctl numbers a vCPU thread may use, with their argument's struct.
pub const KVM_RUN: u64 = kvm_ioc(IOC_NONE, 0x80, 0);
pub const KVM_GET_REGS: u64 = kvm_ioc(IOC_READ, 0x81, 144); // kvm_regs
pub const KVM_SET_REGS: u64 = kvm_ioc(IOC_WRITE, 0x82, 144); // kvm_regs
pub const KVM_GET_SREGS: u64 = kvm_ioc(IOC_READ, 0x83, 312); // kvm_sregs
pub const KVM_SET_SREGS: u64 = kvm_ioc(IOC_WRITE, 0x84, 312); // kvm_sregs
pub const KVM_TRANSLATE: u64 = kvm_ioc(IOC_READ | IOC_WRITE, 0x85, 24); // kvm_translation
pub const KVM_GET_MSRS: u64 = kvm_ioc(IOC_READ | IOC_WRITE, 0x88, 8); // kvm_msrs
pub const KVM_SET_MSRS: u64 = kvm_ioc(IOC_WRITE, 0x89, 8); // kvm_msrs
pub const KVM_GET_FPU: u64 = kvm_ioc(IOC_READ, 0x8c, 416); // kvm_fpu
pub const KVM_SET_FPU: u64 = kvm_ioc(IOC_WRITE, 0x8d, 416); // kvm_fpu
pub const KVM_GET_LAPIC: u64 = kvm_ioc(IOC_READ, 0x8e, 1024); // kvm_lapic_state
pub const KVM_SET_LAPIC: u64 = kvm_ioc(IOC_WRITE, 0x8f, 1024); // kvm_lapic_state
pub const KVM_GET_MP_STATE: u64 = kvm_ioc(IOC_READ, 0x98, 4); // kvm_mp_state
pub const KVM_SET_MP_STATE: u64 = kvm_ioc(IOC_WRITE, 0x99, 4); // kvm_mp_state
pub const KVM_SET_GUEST_DEBUG: u64 = kvm_ioc(IOC_WRITE, 0x9b, 72); // kvm_guest_debug
pub const KVM_GET_VCPU_EVENTS: u64 = kvm_ioc(IOC_READ, 0x9f, 64); // kvm_vcpu_events
pub const KVM_SET_VCPU_EVENTS: u64 = kvm_ioc(IOC_WRITE, 0xa0, 64); // kvm_vcpu_events
pub const KVM_GET_DEBUGREGS: u64 = kvm_ioc(IOC_READ, 0xa1, 128); // kvm_debugregs
pub const KVM_SET_DEBUGREGS: u64 = kvm_ioc(IOC_WRITE, 0xa2, 128); // kvm_debugregs
pub const KVM_KVMCLOCK_CTRL: u64 = kvm_ioc(IOC_NONE, 0xad, 0);

/// Every ioctl request a vCPU thread may make.
pub const VCPU_IOCTLS: &[u64] = &[
    KVM_RUN,
    KVM_GET_REGS,
    KVM_SET_REGS,
    KVM_GET_SREGS,
    KVM_SET_SREGS,
    KVM_TRANSLATE,
    KVM_GET_MSRS,
    KVM_SET_MSRS,
    KVM_GET_FPU,
    KVM_SET_FPU,
    KVM_GET_LAPIC,
    KVM_SET_LAPIC,
    KVM_GET_MP_STATE,
    KVM_SET_MP_STATE,
    KVM_SET_GUEST_DEBUG,
    KVM_GET_VCPU_EVENTS,
    KVM_SET_VCPU_EVENTS,
    KVM_GET_DEBUGREGS,
    KVM_SET_DEBUGREGS,
    KVM_KVMCLOCK_CTRL,
];

const VCPU_CALLS: &[i64] = &[
    libc::SYS_write,
    libc::SYS_futex,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_madvise,
    libc::SYS_munmap,
    libc::SYS_mmap,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_gettid,
    libc::SYS_getpid,
];

const CONSOLE_CALLS: &[i64] = &[
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_accept4,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    libc::SYS_tgkill,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_mremap,
    libc::SYS_munmap,
    libc::SYS_brk,
    libc::SYS_madvise,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

const RESTART_CALLS: &[i64] = &[libc::SYS_lseek];

/// KVM_SET_IRQCHIP (_IOR in the kernel's header, though it writes) and
/// KVM_SET_PIT2: the VM's reset between two boots.
pub const KVM_SET_IRQCHIP: u64 = kvm_ioc(IOC_READ, 0x63, 520); // kvm_irqchip
pub const KVM_SET_PIT2: u64 = kvm_ioc(IOC_WRITE, 0xa0, 112); // kvm_pit_state2
/// The ioctl requests the main thread adds with `--on-reboot restart`.
pub const RESTART_IOCTLS: &[u64] = &[KVM_SET_IRQCHIP, KVM_SET_PIT2];

const WORKER_CALLS: &[i64] = &[
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fdatasync,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_mremap,
    libc::SYS_munmap,
    libc::SYS_brk,
    libc::SYS_madvise,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// What a 9p share's worker adds to a device worker's calls.
const P9_WORKER_CALLS: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_fstatfs,
    libc::SYS_ftruncate,
    libc::SYS_fsync,
    libc::SYS_getdents64,
    libc::SYS_lseek,
    libc::SYS_fcntl,
    libc::SYS_readlinkat,
    libc::SYS_mkdirat,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_linkat,
    libc::SYS_fchmodat,
    libc::SYS_fchownat,
    libc::SYS_utimensat,
];

/// Every kind of thread kvmini runs, each confined by its own program.
/// This list is the one place they are named: build.rs compiles one
/// program per kind, in the order of [`ThreadKind::ALL`], into the array
/// that src/seccomp.rs embeds, and the tests check every one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    Vcpu,
    /// The main thread once the VM runs.
    Console,
    /// The main thread with `--on-reboot restart`.
    ConsoleRestart,
    /// A device's worker thread.
    Worker,
    /// A virtio-9p share's worker thread.
    P9Worker,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 5] = [
        ThreadKind::Vcpu,
        ThreadKind::Console,
        ThreadKind::ConsoleRestart,
        ThreadKind::Worker,
        ThreadKind::P9Worker,
    ];

    /// What a thread of this kind may call.
    pub fn rules(self) -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
        match self {
            ThreadKind::Vcpu => vcpu_rules(),
            ThreadKind::Console => console_rules(false),
            ThreadKind::ConsoleRestart => console_rules(true),
            ThreadKind::Worker => worker_rules(),
            ThreadKind::P9Worker => p9_worker_rules(),
        }
    }

    /// The program for a thread of this kind, as seccompiler compiles it.
    pub fn program(self) -> Result<BpfProgram, BackendError> {
        seccompiler_program(self.rules()?)
    }
}

/// seccompiler's own program for `rules`, as it compiles it.
pub fn seccompiler_program(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
) -> Result<BpfProgram, BackendError> {
    SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?
    .try_into()
}

fn ioctl_rule(request: u64) -> Result<SeccompRule, BackendError> {
    let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)?;
    SeccompRule::new(vec![cond])
}

/// mprotect with PROT_READ | PROT_WRITE only: glibc grows a thread's
/// malloc arena (any thread but the main one) by making more of its
/// reserved heap readable and writable. Nothing may become executable.
fn mprotect_rw_rule() -> Result<SeccompRule, BackendError> {
    let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let cond = SeccompCondition::new(2, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, prot)?;
    SeccompRule::new(vec![cond])
}

/// What a device worker thread may call.
pub fn worker_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        WORKER_CALLS.iter().map(|&c| (c, vec![])).collect();
    rules.insert(libc::SYS_mprotect, vec![mprotect_rw_rule()?]);
    rules.insert(libc::SYS_ioctl, vec![restore_terminal_rule()?]);
    Ok(rules)
}

/// What a 9p share's worker thread may call.
pub fn p9_worker_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
    let mut rules = worker_rules()?;
    for &c in P9_WORKER_CALLS {
        rules.insert(c, vec![]);
    }
    Ok(rules)
}

/// ioctl(0, TCSETS): the last way out of any thread (src/fatal.rs, a panic
/// or a failed allocation) puts the terminal on stdin back as it was.
fn restore_terminal_rule() -> Result<SeccompRule, BackendError> {
    SeccompRule::new(vec![
        SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, 0)?,
        SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, libc::TCSETS)?,
    ])
}

/// What a vCPU thread may call.
pub fn vcpu_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        VCPU_CALLS.iter().map(|&c| (c, vec![])).collect();
    rules.insert(libc::SYS_mprotect, vec![mprotect_rw_rule()?]);
    rules.insert(
        libc::SYS_ioctl,
        VCPU_IOCTLS
            .iter()
            .map(|&r| ioctl_rule(r))
            .chain(std::iter::once(restore_terminal_rule()))
            .collect::<Result<_, _>>()?,
    );
    Ok(rules)
}

/// KVM_REGISTER_COALESCED_MMIO: _IOW(KVMIO, 0x67, struct
/// kvm_coalesced_mmio_zone), 16 bytes.
pub const KVM_REGISTER_COALESCED_MMIO: u64 = 0x4010_ae67;

/// The ioctls the console thread makes once the VM runs: isatty and
/// tcgetattr (TCGETS), restoring the terminal (TCSETS and its draining
/// variants), the window size a logger may ask for, making an accepted
/// socket client non-blocking (FIONBIO) and close-on-exec (FIOCLEX), and
/// batching COM1's writes once a guest without interrupts prints a lot.
pub const CONSOLE_IOCTLS: &[u64] = &[
    KVM_REGISTER_COALESCED_MMIO,
    libc::FIONBIO,
    libc::FIOCLEX,
    libc::TCGETS,
    libc::TCSETS,
    libc::TCSETSW,
    libc::TCSETSF,
    libc::TIOCGWINSZ,
];

/// What the console (main) thread may call; with `restart`, also what
/// rebuilding the VM in place needs (then any ioctl: the KVM setup calls).
pub fn console_rules(restart: bool) -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
    let (extra, extra_ioctls): (&[i64], &[u64]) = if restart {
        (RESTART_CALLS, RESTART_IOCTLS)
    } else {
        (&[], &[])
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = CONSOLE_CALLS
        .iter()
        .chain(extra)
        .map(|&c| (c, vec![]))
        .collect();
    rules.insert(
        libc::SYS_ioctl,
        CONSOLE_IOCTLS
            .iter()
            .chain(extra_ioctls)
            .map(|&r| ioctl_rule(r))
            .collect::<Result<_, _>>()?,
    );
    Ok(rules)
}
