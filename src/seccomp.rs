//! Seccomp filters, one per kind of thread, installed with seccompiler
//! once setup is done. A system call outside a thread's list kills the
//! whole process with SIGSYS. `--no-seccomp` turns them off.
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
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
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
    SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .map_err(Error::Build)?
    .try_into()
    .map_err(Error::Compile)
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
