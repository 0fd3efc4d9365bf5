//! Seccomp filters, one per kind of thread, installed with seccompiler
//! once setup is done. A system call outside a thread's list kills the
//! whole process with SIGSYS. `--no-seccomp` turns them off.
//!
//! The policy (which calls each thread may make, and why) is in
//! `src/seccomp_policy.rs`. build.rs compiles it with seccompiler and
//! writes the programs out as the statics below, as Firecracker embeds its filters, so no VM pays for compiling
//! them (the README's Benchmarks section has the figure). The tests compile the
//! policy again and check that the embedded programs are the same.

use seccompiler::sock_filter;

include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));

// The policy is compiled by build.rs; at run time only its list of thread
// kinds is needed (the compiling functions are left out of the binary).
#[allow(dead_code)]
#[path = "seccomp_policy.rs"]
mod policy;

pub use policy::ThreadKind;

/// The embedded filter for threads of `kind`.
pub fn filter(kind: ThreadKind) -> &'static [sock_filter] {
    FILTERS[kind as usize]
}

/// Errors installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot install the seccomp filter")]
    Install(#[source] seccompiler::Error),
}

/// The filter for a vCPU thread.
pub fn vcpu_filter() -> &'static [sock_filter] {
    filter(ThreadKind::Vcpu)
}

/// The filter for the console (main) thread; with `restart`, it also
/// allows what rebuilding the VM in place needs.
pub fn console_filter(restart: bool) -> &'static [sock_filter] {
    filter(if restart {
        ThreadKind::ConsoleRestart
    } else {
        ThreadKind::Console
    })
}

/// Makes the C library's allocator keep to the calls the filters allow;
/// once per process, before the first thread is confined. glibc gives
/// freed memory at the top of a thread's arena back to the kernel, and the
/// first time it does so it reads /proc/sys/vm/overcommit_memory: an
/// openat, which no confined thread may make (a disk's worker died by
/// SIGSYS freeing a 64 KiB request buffer). With the trim threshold at its
/// maximum no arena is trimmed; freed memory stays in the allocator for
/// reuse, and large buffers are mmap'd and unmapped as before.
pub fn prepare_allocator() {
    // SAFETY: mallopt only sets a parameter of the allocator.
    unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) };
}

/// Installs `filter` on the calling thread.
pub fn install(filter: &[sock_filter]) -> Result<(), Error> {
    seccompiler::apply_filter(filter).map_err(Error::Install)
}

#[cfg(test)]
mod tests {
    use super::policy::*;
    use super::*;

    /// Runs `f` in a forked child with `filter` installed; returns the
    /// signal that killed the child, or None if it exited.
    fn in_child(filter: &[sock_filter], f: fn()) -> Option<i32> {
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

    /// Requests a vCPU thread must not make: ones next to those it may.
    const NOT_FOR_VCPUS: &[u64] = &[
        libc::TCGETS,
        0,
        0xae90,      // KVM_SET_CPUID2 without its size
        0x4090_ae90, // a KVM_SET_CPUID2-like number
        0x9000_aea4, // KVM_GET_XSAVE
        0x4188_aea7, // KVM_SET_XCRS
        0xaeb7,      // KVM_SMI
        0xae9a,      // KVM_NMI
    ];

    #[test]
    fn ioctl_numbers_are_kvms() {
        // _IOW(KVMIO, 0x67, struct kvm_coalesced_mmio_zone)
        let size = std::mem::size_of::<kvm_bindings::kvm_coalesced_mmio_zone>() as u64;
        assert_eq!(
            KVM_REGISTER_COALESCED_MMIO,
            (1 << 30) | (size << 16) | (0xae << 8) | 0x67
        );
    }

    #[test]
    fn restart_ioctl_numbers_are_kvms() {
        use kvm_bindings::*;
        use vmm_sys_util::{ioctl_ior_nr, ioctl_iow_nr};
        // KVM_SET_IRQCHIP is _IOR in the kernel's header, though it writes.
        ioctl_ior_nr!(SET_IRQCHIP, KVMIO, 0x63, kvm_irqchip);
        ioctl_iow_nr!(SET_PIT2, KVMIO, 0xa0, kvm_pit_state2);
        assert_eq!(RESTART_IOCTLS, [SET_IRQCHIP(), SET_PIT2()].map(u64::from));
    }

    #[test]
    fn vcpu_ioctl_numbers_are_kvms() {
        use kvm_bindings::*;
        use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};
        ioctl_io_nr!(RUN, KVMIO, 0x80);
        ioctl_ior_nr!(GET_REGS, KVMIO, 0x81, kvm_regs);
        ioctl_iow_nr!(SET_REGS, KVMIO, 0x82, kvm_regs);
        ioctl_ior_nr!(GET_SREGS, KVMIO, 0x83, kvm_sregs);
        ioctl_iow_nr!(SET_SREGS, KVMIO, 0x84, kvm_sregs);
        ioctl_iowr_nr!(TRANSLATE, KVMIO, 0x85, kvm_translation);
        ioctl_iowr_nr!(GET_MSRS, KVMIO, 0x88, kvm_msrs);
        ioctl_iow_nr!(SET_MSRS, KVMIO, 0x89, kvm_msrs);
        ioctl_ior_nr!(GET_FPU, KVMIO, 0x8c, kvm_fpu);
        ioctl_iow_nr!(SET_FPU, KVMIO, 0x8d, kvm_fpu);
        ioctl_ior_nr!(GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
        ioctl_iow_nr!(SET_LAPIC, KVMIO, 0x8f, kvm_lapic_state);
        ioctl_ior_nr!(GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
        ioctl_iow_nr!(SET_MP_STATE, KVMIO, 0x99, kvm_mp_state);
        ioctl_iow_nr!(SET_GUEST_DEBUG, KVMIO, 0x9b, kvm_guest_debug);
        ioctl_ior_nr!(GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
        ioctl_iow_nr!(SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
        ioctl_ior_nr!(GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
        ioctl_iow_nr!(SET_DEBUGREGS, KVMIO, 0xa2, kvm_debugregs);
        ioctl_io_nr!(KVMCLOCK_CTRL, KVMIO, 0xad);
        let kvm = [
            RUN(),
            GET_REGS(),
            SET_REGS(),
            GET_SREGS(),
            SET_SREGS(),
            TRANSLATE(),
            GET_MSRS(),
            SET_MSRS(),
            GET_FPU(),
            SET_FPU(),
            GET_LAPIC(),
            SET_LAPIC(),
            GET_MP_STATE(),
            SET_MP_STATE(),
            SET_GUEST_DEBUG(),
            GET_VCPU_EVENTS(),
            SET_VCPU_EVENTS(),
            GET_DEBUGREGS(),
            SET_DEBUGREGS(),
            KVMCLOCK_CTRL(),
        ]
        .map(u64::from);
        assert_eq!(VCPU_IOCTLS, kvm);
        // Spot checks against the kernel headers' values.
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(KVM_SET_GUEST_DEBUG, 0x4048_ae9b);
        assert_eq!(KVM_TRANSLATE, 0xc018_ae85);
        assert_eq!(KVM_KVMCLOCK_CTRL, 0xaead);
    }

    #[test]
    fn the_embedded_filters_are_the_policy() {
        for kind in ThreadKind::ALL {
            assert_eq!(filter(kind), kind.program().unwrap(), "{kind:?}");
        }
        assert_eq!(vcpu_filter(), filter(ThreadKind::Vcpu));
        assert_eq!(console_filter(false), filter(ThreadKind::Console));
        assert_eq!(console_filter(true), filter(ThreadKind::ConsoleRestart));
        assert_ne!(console_filter(true), console_filter(false));
    }

    #[test]
    fn verdicts_are_the_ones_meant() {
        let vcpu = vcpu_filter();
        let (allow, kill) = (0x7fff_0000, 0x8000_0000);
        let ioctl = |request: u64| {
            eval(
                vcpu,
                AUDIT_ARCH_X86_64,
                libc::SYS_ioctl as u32,
                [3, request, 0, 0, 0, 0],
            )
        };
        for &request in VCPU_IOCTLS {
            assert_eq!(ioctl(request), allow, "{request:#x}");
            // Only the low 32 bits are compared (the kernel's ioctl takes
            // an unsigned int): the high half does not matter.
            assert_eq!(ioctl(request | 1 << 32), allow, "{request:#x}");
        }
        for &request in NOT_FOR_VCPUS {
            assert_eq!(ioctl(request), kill, "{request:#x}");
        }
        let plain = |nr: i64, arch: u32| eval(vcpu, arch, nr as u32, [0; 6]);
        assert_eq!(plain(libc::SYS_write, AUDIT_ARCH_X86_64), allow);
        assert_eq!(plain(libc::SYS_write, AUDIT_ARCH_I386), kill);
        assert_eq!(plain(libc::SYS_openat, AUDIT_ARCH_X86_64), kill);
    }

    #[test]
    fn a_reboot_in_place_creates_nothing() {
        // The restart filter is the console's plus resetting the chips and
        // re-reading open files: no new VM, vCPU, thread, file or filter.
        let (allow, kill) = (0x7fff_0000, 0x8000_0000);
        let restart = console_filter(true);
        let call = |nr: i64, args: [u64; 6]| eval(restart, AUDIT_ARCH_X86_64, nr as u32, args);
        for request in RESTART_IOCTLS.iter().chain(CONSOLE_IOCTLS) {
            assert_eq!(call(libc::SYS_ioctl, [3, *request, 0, 0, 0, 0]), allow);
        }
        assert_eq!(call(libc::SYS_lseek, [0; 6]), allow);
        for request in [
            KVM_RUN, 0xae01, /* KVM_CREATE_VM */
            0xae41, /* KVM_CREATE_VCPU */
        ] {
            assert_eq!(call(libc::SYS_ioctl, [3, request, 0, 0, 0, 0]), kill);
        }
        for nr in [
            libc::SYS_openat,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_seccomp,
            libc::SYS_eventfd2,
            libc::SYS_sendmsg,
        ] {
            assert_eq!(call(nr, [0; 6]), kill, "{nr}");
        }
    }

    /// Allocates and frees 48 MiB in 64 KiB pieces, which a thread other
    /// than the main one takes from its own malloc arena, grown by
    /// mprotect. (libtest runs each test on a thread of its own, and the
    /// forked child keeps running on it.)
    fn grow_a_thread_arena() {
        let pieces: Vec<Vec<u8>> = (0..768).map(|i| vec![i as u8; 64 * 1024]).collect();
        assert_eq!(pieces.len(), 768);
    }

    fn make_memory_executable() {
        // SAFETY: a fresh private anonymous page, changed and dropped by
        // this child only.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC);
        }
    }

    #[test]
    fn threads_that_allocate_may_grow_their_arena_but_not_make_code() {
        assert_ne!(std::thread::current().name(), Some("main"));
        // Without it, freeing the pieces trims the arena, which opens
        // /proc/sys/vm/overcommit_memory: SIGSYS.
        prepare_allocator();
        for kind in [ThreadKind::Worker, ThreadKind::Vcpu] {
            assert_eq!(
                in_child(filter(kind), grow_a_thread_arena),
                None,
                "{kind:?}"
            );
            assert_eq!(
                in_child(filter(kind), make_memory_executable),
                Some(libc::SIGSYS),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn forbidden_calls_kill_with_sigsys() {
        let vcpu = vcpu_filter();
        assert_eq!(in_child(vcpu, open_a_socket), Some(libc::SIGSYS));
        assert_eq!(in_child(vcpu, forbidden_ioctl), Some(libc::SIGSYS));
        let console = console_filter(false);
        assert_eq!(in_child(console, open_a_socket), Some(libc::SIGSYS));
        // The console's ioctls are the terminal's, by request number.
        assert_eq!(in_child(console, kvm_run_ioctl), Some(libc::SIGSYS));
        assert_eq!(in_child(console, forbidden_ioctl), None, "TCGETS");
        let worker = filter(ThreadKind::Worker);
        assert_eq!(in_child(worker, open_a_socket), Some(libc::SIGSYS));
        assert_eq!(in_child(worker, kvm_run_ioctl), Some(libc::SIGSYS));
        let p9 = filter(ThreadKind::P9Worker);
        assert_eq!(in_child(p9, open_a_socket), Some(libc::SIGSYS));
        assert_eq!(in_child(p9, kvm_run_ioctl), Some(libc::SIGSYS));
        assert_eq!(in_child(p9, allowed_calls), None);
    }

    #[test]
    fn a_share_worker_may_use_files_but_nothing_else() {
        // Only the 9p worker opens files; it still cannot run programs,
        // make threads, sockets or filters, or change its root.
        let (allow, kill) = (0x7fff_0000, 0x8000_0000);
        let p9 = filter(ThreadKind::P9Worker);
        let call = |f: &[sock_filter], nr: i64| eval(f, AUDIT_ARCH_X86_64, nr as u32, [0; 6]);
        for nr in [libc::SYS_openat, libc::SYS_getdents64, libc::SYS_renameat] {
            assert_eq!(call(p9, nr), allow, "{nr}");
            assert_eq!(call(filter(ThreadKind::Worker), nr), kill, "{nr}");
        }
        for nr in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_socket,
            libc::SYS_seccomp,
            libc::SYS_chroot,
            libc::SYS_chdir,
            libc::SYS_open,
            libc::SYS_openat2,
            libc::SYS_symlinkat,
            libc::SYS_mknodat,
            libc::SYS_ptrace,
        ] {
            assert_eq!(call(p9, nr), kill, "{nr}");
        }
    }

    #[test]
    fn listed_calls_are_allowed() {
        let vcpu = vcpu_filter();
        assert_eq!(in_child(vcpu, allowed_calls), None);
        assert_eq!(in_child(vcpu, kvm_run_ioctl), None);
        assert_eq!(in_child(filter(ThreadKind::Worker), allowed_calls), None);
        let console = console_filter(true);
        assert_eq!(in_child(console, allowed_calls), None);
        assert_eq!(in_child(console, forbidden_ioctl), None);
    }
}
