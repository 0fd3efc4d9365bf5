//! Seccomp filters, one per kind of thread, compiled and installed with
//! seccompiler once setup is done. A system call outside a thread's list
//! kills the whole process with SIGSYS. `--no-seccomp` turns them off.
//! seccompiler's programs are shortened first ([`shorten`]): the kernel's
//! cost of installing a filter grows with its length.
//!
//! The lists (why each call is needed):
//!
//! vCPU threads:
//! - ioctl, only KVM_RUN, KVM_GET_REGS and KVM_GET_SREGS (the run loop and
//!   the register dump of a crash report)
//! - write (irqfd and wake-up eventfds; log lines on stderr)
//! - futex (locks shared with the console thread)
//! - rt_sigreturn (return from the kick signal's handler), rt_sigprocmask,
//!   sigaltstack, madvise, munmap, exit (thread exit); exit_group (the
//!   panic hook ends the process with the internal-error status)
//! - mmap, mremap, brk (memory allocation, e.g. a crash report)
//! - sched_yield, clock_gettime, gettid, getpid (std and log internals)
//!
//! The console (main) thread, after the VM started:
//! - poll, ppoll, read, write, readv, writev, recvfrom, sendto (console
//!   I/O: stdin, stdout, files, ptys, sockets, eventfds, the signalfd)
//! - accept4, close, fcntl (socket clients come and go)
//! - ioctl (restoring the terminal; KVM calls when the guest reboots in
//!   place)
//! - tgkill (kicking vCPU threads), clock_nanosleep, nanosleep, sched_yield
//! - futex, mmap, mremap, munmap, brk, madvise, rt_sigreturn,
//!   rt_sigprocmask, sigaltstack, clock_gettime, gettid, getpid,
//!   restart_syscall, exit, exit_group (std, allocation, leaving)
//! - unlink, unlinkat (removing the serial socket at exit)
//! - with `--on-reboot restart` also what rebuilding the VM needs: openat,
//!   newfstatat, fstat, statx, lseek, eventfd2, clone, clone3, mprotect,
//!   set_robust_list, rseq, prctl, seccomp, sched_getaffinity, getrandom.

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// ioctl numbers a vCPU thread may use.
const KVM_RUN: u64 = 0xae80;
const KVM_GET_REGS: u64 = 0x8090_ae81;
const KVM_GET_SREGS: u64 = 0x8138_ae83;

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the seccomp filter")]
    Build(#[source] seccompiler::BackendError),
    #[error("cannot compile the seccomp filter")]
    Compile(#[source] seccompiler::BackendError),
    #[error("cannot install the seccomp filter")]
    Install(#[source] seccompiler::Error),
}

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

const RESTART_CALLS: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_eventfd2,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_mprotect,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_seccomp,
    libc::SYS_sched_getaffinity,
    libc::SYS_getrandom,
];

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>) -> Result<BpfProgram, Error> {
    let arch = TargetArch::x86_64;
    let program: BpfProgram = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .map_err(Error::Build)?
    .try_into()
    .map_err(Error::Compile)?;
    Ok(shorten(program))
}

// Classic BPF opcodes (linux/bpf_common.h) that `shorten` looks at.
const BPF_CLASS_MASK: u16 = 0x07;
const BPF_OP_MASK: u16 = 0xf0;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_JA: u16 = 0x00;

/// Where control can go from instruction `pc` (no check that it exists).
fn successors(program: &[sock_filter], pc: usize) -> Vec<usize> {
    let insn = &program[pc];
    match insn.code & BPF_CLASS_MASK {
        BPF_RET => vec![],
        BPF_JMP if insn.code & BPF_OP_MASK == BPF_JA => vec![pc + 1 + insn.k as usize],
        BPF_JMP => vec![pc + 1 + usize::from(insn.jt), pc + 1 + usize::from(insn.jf)],
        _ => vec![pc + 1],
    }
}

/// The same filter in fewer instructions.
///
/// seccompiler compiles each allowed call into five instructions: a
/// compare, two unconditional jumps and a return for either outcome. The
/// kernel pays for every instruction when a filter is installed (it
/// translates and JIT-compiles the program and runs it for every system
/// call number to build its cache): ~0.5 µs each on this host, so
/// installing the two filters cost ~0.14 ms of every VM's lifetime.
///
/// This pass rewrites the program without changing what it returns for
/// any input: every jump goes straight to where its chain of unconditional
/// jumps ends, every jump to a return goes to the program's last identical
/// return (jumps only go forward, so that one is always ahead), and the
/// instructions no path reaches any more are dropped. An allowed call is
/// then one compare. If a jump would end up too far for its 8-bit offset,
/// or the program is not the kind expected, it is returned unchanged.
pub fn shorten(program: BpfProgram) -> BpfProgram {
    let n = program.len();
    let is_ja =
        |i: &sock_filter| i.code & BPF_CLASS_MASK == BPF_JMP && i.code & BPF_OP_MASK == BPF_JA;
    let is_ret = |i: &sock_filter| i.code & BPF_CLASS_MASK == BPF_RET;
    // Where a jump to `t` ends up; None if that leaves the program.
    let resolve = |mut t: usize| -> Option<usize> {
        let mut hops = 0;
        while t < n && is_ja(&program[t]) && hops <= n {
            t = t + 1 + program[t].k as usize;
            hops += 1;
        }
        let target = program.get(t)?;
        if is_ret(target) {
            (t..n)
                .rev()
                .find(|&u| program[u].code == target.code && program[u].k == target.k)
        } else {
            Some(t)
        }
    };
    let mut targets = Vec::with_capacity(n);
    for pc in 0..n {
        let insn = &program[pc];
        let next = successors(&program, pc);
        let resolved: Option<Vec<usize>> = if insn.code & BPF_CLASS_MASK == BPF_JMP {
            next.into_iter().map(resolve).collect()
        } else {
            Some(next)
        };
        match resolved {
            Some(t) if t.iter().all(|&t| t < n) => targets.push(t),
            _ => return program,
        }
    }
    let mut live = vec![false; n];
    let mut todo = vec![0];
    while let Some(pc) = todo.pop() {
        if !std::mem::replace(&mut live[pc], true) {
            todo.extend_from_slice(&targets[pc]);
        }
    }
    let mut new_pc = vec![0; n];
    let mut count = 0;
    for pc in (0..n).filter(|&pc| live[pc]) {
        new_pc[pc] = count;
        count += 1;
    }
    let mut out = Vec::with_capacity(count);
    for pc in (0..n).filter(|&pc| live[pc]) {
        let mut insn = program[pc].clone();
        let offset = |t: usize| new_pc[t] - new_pc[pc] - 1;
        if is_ja(&insn) {
            insn.k = offset(targets[pc][0]) as u32;
        } else if insn.code & BPF_CLASS_MASK == BPF_JMP {
            match (
                u8::try_from(offset(targets[pc][0])),
                u8::try_from(offset(targets[pc][1])),
            ) {
                (Ok(jt), Ok(jf)) => (insn.jt, insn.jf) = (jt, jf),
                _ => return program,
            }
        }
        out.push(insn);
    }
    out
}

fn ioctl_rule(request: u64) -> Result<SeccompRule, Error> {
    let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
        .map_err(Error::Build)?;
    SeccompRule::new(vec![cond]).map_err(Error::Build)
}

/// The filter for a vCPU thread.
pub fn vcpu_filter() -> Result<BpfProgram, Error> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        VCPU_CALLS.iter().map(|&c| (c, vec![])).collect();
    rules.insert(
        libc::SYS_ioctl,
        [KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS]
            .into_iter()
            .map(ioctl_rule)
            .collect::<Result<_, _>>()?,
    );
    compile(rules)
}

/// The filter for the console (main) thread.
pub fn console_filter(restart: bool) -> Result<BpfProgram, Error> {
    let extra: &[i64] = if restart { RESTART_CALLS } else { &[] };
    compile(
        CONSOLE_CALLS
            .iter()
            .chain(extra)
            .map(|&c| (c, vec![]))
            .collect(),
    )
}

/// Installs `filter` on the calling thread.
pub fn install(filter: &BpfProgram) -> Result<(), Error> {
    seccompiler::apply_filter(filter).map_err(Error::Install)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` in a forked child with `filter` installed; returns the
    /// signal that killed the child, or None if it exited.
    fn in_child(filter: &BpfProgram, f: fn()) -> Option<i32> {
        // SAFETY: the child only makes raw system calls before _exit: no
        // allocation, no locks (the filter was built before the fork).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            if install(filter).is_err() {
                // SAFETY: leaving the child at once.
                unsafe { libc::_exit(3) };
            }
            f();
            // SAFETY: exit(2), not exit_group(2), which the vCPU filter does
            // not allow; the child has one thread, so this ends it.
            unsafe { libc::syscall(libc::SYS_exit, 0) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if libc::WIFSIGNALED(status) {
            Some(libc::WTERMSIG(status))
        } else {
            assert_eq!(
                libc::WEXITSTATUS(status),
                0,
                "child failed to install the filter"
            );
            None
        }
    }

    fn open_a_socket() {
        // SAFETY: a plain system call; the result is irrelevant.
        unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) };
    }

    fn allowed_calls() {
        // SAFETY: plain system calls on no resources.
        unsafe {
            libc::syscall(libc::SYS_getpid);
            libc::syscall(libc::SYS_write, -1, std::ptr::null::<u8>(), 0);
        }
    }

    fn forbidden_ioctl() {
        // SAFETY: an ioctl on an invalid descriptor; only the number matters.
        unsafe { libc::syscall(libc::SYS_ioctl, -1, libc::TCGETS, 0) };
    }

    fn kvm_run_ioctl() {
        // SAFETY: as above, with KVM_RUN, which the vCPU filter allows.
        unsafe { libc::syscall(libc::SYS_ioctl, -1, KVM_RUN, 0) };
    }

    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const AUDIT_ARCH_I386: u32 = 0x4000_0003;

    /// What a classic BPF program returns for a system call, computed the
    /// way the kernel runs it; panics on an instruction it does not know,
    /// so a new kind of instruction cannot pass unnoticed.
    fn eval(program: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let insn = &program[pc];
            pc += 1;
            match insn.code {
                0x20 => {
                    let at = insn.k as usize;
                    acc = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
                }
                0x54 => acc &= insn.k,
                0x06 => return insn.k,
                0x05 => pc += insn.k as usize,
                0x15 | 0x25 | 0x35 | 0x45 => {
                    let taken = match insn.code {
                        0x15 => acc == insn.k,
                        0x25 => acc > insn.k,
                        0x35 => acc >= insn.k,
                        _ => acc & insn.k != 0,
                    };
                    pc += usize::from(if taken { insn.jt } else { insn.jf });
                }
                code => panic!("instruction {code:#x} at {}", pc - 1),
            }
        }
    }

    /// seccompiler's own program for the same rules, not shortened.
    fn unshortened(rules: BTreeMap<i64, Vec<SeccompRule>>) -> BpfProgram {
        SeccompFilter::new(
            rules,
            SeccompAction::KillProcess,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )
        .unwrap()
        .try_into()
        .unwrap()
    }

    fn same_verdicts(a: &[sock_filter], b: &[sock_filter]) {
        let requests = [KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS, libc::TCGETS, 0];
        for arch in [AUDIT_ARCH_X86_64, AUDIT_ARCH_I386, 0] {
            for nr in (0..600).chain([0x4000_0000, 0x4000_0001, u32::MAX]) {
                for request in requests {
                    for high in [0, 1 << 32] {
                        let args = [3, request | high, 0, 0, 0, 0];
                        assert_eq!(
                            eval(a, arch, nr, args),
                            eval(b, arch, nr, args),
                            "arch {arch:#x} nr {nr} request {:#x}",
                            request | high
                        );
                    }
                }
            }
        }
    }

    fn vcpu_rules() -> BTreeMap<i64, Vec<SeccompRule>> {
        let mut rules: BTreeMap<_, _> = VCPU_CALLS.iter().map(|&c| (c, vec![])).collect();
        let ioctls = [KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS].map(|r| ioctl_rule(r).unwrap());
        rules.insert(libc::SYS_ioctl, ioctls.to_vec());
        rules
    }

    fn console_rules() -> BTreeMap<i64, Vec<SeccompRule>> {
        CONSOLE_CALLS
            .iter()
            .chain(RESTART_CALLS)
            .map(|&c| (c, vec![]))
            .collect()
    }

    #[test]
    fn shortened_filters_decide_as_seccompilers_own() {
        for rules in [vcpu_rules(), console_rules()] {
            let long = unshortened(rules);
            let short = shorten(long.clone());
            same_verdicts(&long, &short);
            // One compare per allowed call, plus the arch check, the
            // argument checks and the two returns.
            assert!(
                short.len() * 2 < long.len(),
                "{} -> {}",
                long.len(),
                short.len()
            );
        }
        // The vCPU filter: 17 calls, three ioctl requests.
        assert!(vcpu_filter().unwrap().len() <= 30);
    }

    #[test]
    fn verdicts_are_the_ones_meant() {
        let vcpu = vcpu_filter().unwrap();
        let (allow, kill) = (0x7fff_0000, 0x8000_0000);
        let ioctl = |request: u64| {
            eval(
                &vcpu,
                AUDIT_ARCH_X86_64,
                libc::SYS_ioctl as u32,
                [3, request, 0, 0, 0, 0],
            )
        };
        assert_eq!(ioctl(KVM_RUN), allow);
        assert_eq!(ioctl(libc::TCGETS), kill);
        let plain = |nr: i64, arch: u32| eval(&vcpu, arch, nr as u32, [0; 6]);
        assert_eq!(plain(libc::SYS_write, AUDIT_ARCH_X86_64), allow);
        assert_eq!(plain(libc::SYS_write, AUDIT_ARCH_I386), kill);
        assert_eq!(plain(libc::SYS_openat, AUDIT_ARCH_X86_64), kill);
    }

    #[test]
    fn a_program_it_cannot_shorten_comes_back_unchanged() {
        // 300 calls: the jump from the first compare to the shared return
        // would need an offset over 255.
        let rules = (0..300).map(|c| (c, vec![])).collect();
        let long = unshortened(rules);
        assert_eq!(shorten(long.clone()), long);
        // A jump out of the program.
        let broken = vec![sock_filter {
            code: 0x05,
            jt: 0,
            jf: 0,
            k: 7,
        }];
        assert_eq!(shorten(broken.clone()), broken);
    }

    #[test]
    fn forbidden_calls_kill_with_sigsys() {
        let vcpu = vcpu_filter().unwrap();
        assert_eq!(in_child(&vcpu, open_a_socket), Some(libc::SIGSYS));
        assert_eq!(in_child(&vcpu, forbidden_ioctl), Some(libc::SIGSYS));
        let console = console_filter(false).unwrap();
        assert_eq!(in_child(&console, open_a_socket), Some(libc::SIGSYS));
    }

    #[test]
    fn listed_calls_are_allowed() {
        let vcpu = vcpu_filter().unwrap();
        assert_eq!(in_child(&vcpu, allowed_calls), None);
        assert_eq!(in_child(&vcpu, kvm_run_ioctl), None);
        let console = console_filter(true).unwrap();
        assert_eq!(in_child(&console, allowed_calls), None);
        assert_eq!(in_child(&console, forbidden_ioctl), None);
    }
}
