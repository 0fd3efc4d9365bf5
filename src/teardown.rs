//! The VM's destruction, off the caller's path.
//!
//! KVM destroys a VM when the last reference to it goes, and that waits
//! for RCU/SRCU grace periods (for a VM with the in-kernel irqchip, tens of
//! milliseconds on some hosts; see the README's Benchmarks section). kvmini's caller
//! waits for nothing of that: a helper process, forked before the first VM
//! exists, receives a duplicate of each VM's file descriptor and holds it.
//! kvmini closes its own references (vCPUs, the VM) when the VM stops,
//! reports, and exits; the helper then sees its socket close, drops the
//! last reference, and exits once KVM has destroyed the VM. The same idea
//! as QEMU's `-run-with async-teardown=on`.
//!
//! Guarantees:
//! - The helper holds nothing a user can see: it closes every descriptor
//!   it inherited (standard streams, files, sockets, terminals) before it
//!   does anything else, and keeps only its socket and the VM descriptors
//!   it is handed. A caller reading kvmini's output to its end is never
//!   held up by it.
//! - The helper never outlives the VM's destruction: it exits as soon as
//!   the VM it holds is gone. It ignores the terminal's signals (so Ctrl-C
//!   on kvmini's terminal does not move the destruction back onto
//!   kvmini's path); SIGKILL still ends it, and the VM with it.
//! - If the helper cannot be started or has gone, kvmini destroys the VM
//!   itself, as it would without one: nothing is lost but time.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// kvmini's end of the helper's socket. Dropping it lets the helper go
/// (after it has dropped the VMs it holds).
pub struct Reaper {
    sock: OwnedFd,
}

impl Reaper {
    /// Forks the helper. Call it while the process is still one thread
    /// (the child runs only system calls, so any thread count would be
    /// safe, but a single thread makes the fork cheapest).
    pub fn start() -> io::Result<Reaper> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: fds has room for the two descriptors socketpair returns.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned here.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: the child runs only async-signal-safe system calls on
        // its copy of the address space and leaves with _exit.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            0 => helper(theirs.as_raw_fd()),
            _ => Ok(Reaper { sock: ours }),
        }
    }

    /// Gives the helper a reference to the VM behind `vm`; it keeps it
    /// until kvmini has gone (or the next VM arrives, after a reboot in
    /// place). On an error kvmini keeps destroying the VM itself.
    pub fn hand_over(&self, vm: RawFd) -> io::Result<()> {
        let mut space = [0u8; 64];
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        // SAFETY: msghdr is plain data; the fields set below make it valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as _;
        // SAFETY: the control buffer is large enough for one cmsg with one
        // fd (checked by CMSG_SPACE above against its 64 bytes).
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), vm);
        }
        // SAFETY: msg points at live buffers for the call; MSG_NOSIGNAL: a
        // helper that has gone gives EPIPE, not SIGPIPE.
        let n = unsafe { libc::sendmsg(self.sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The helper process: see the module's documentation. Never returns.
fn helper(sock: RawFd) -> ! {
    // SAFETY: (all of this function) system calls on descriptors and
    // buffers owned by this single-threaded child; nothing here allocates,
    // takes a lock or returns into the parent's Rust runtime.
    unsafe {
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        // The signal mask is inherited; the helper needs none blocked.
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_NAME, c"kvmini-teardown".as_ptr());
        // Every inherited descriptor but the socket goes first.
        close_all_but(sock);
        let mut held: RawFd = -1;
        loop {
            let mut space = [0u64; 8];
            let mut byte = [0u8; 1];
            let mut iov = libc::iovec {
                iov_base: byte.as_mut_ptr().cast(),
                iov_len: 1,
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = space.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&space) as _;
            let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if n <= 0 {
                break;
            }
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            if !cmsg.is_null()
                && (*cmsg).cmsg_level == libc::SOL_SOCKET
                && (*cmsg).cmsg_type == libc::SCM_RIGHTS
            {
                let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
                // A new VM after a reboot in place: the previous one is
                // destroyed here, beside the new boot.
                if held >= 0 {
                    libc::close(held);
                }
                held = fd;
            }
        }
        if held >= 0 {
            libc::close(held);
        }
        libc::_exit(0)
    }
}

/// Closes every descriptor of this process except `keep`.
///
/// # Safety
/// Only for the helper, which owns nothing else.
unsafe fn close_all_but(keep: RawFd) {
    let keep = keep as libc::c_uint;
    // SAFETY: close_range on this process's own descriptor table.
    let rc = unsafe {
        let mut rc = 0;
        if keep > 0 {
            rc |= libc::syscall(libc::SYS_close_range, 0u32, keep - 1, 0u32);
        }
        rc | libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0u32)
    };
    if rc != 0 {
        // Kernels before 5.9: close them one by one.
        // SAFETY: as above.
        unsafe {
            let max = libc::sysconf(libc::_SC_OPEN_MAX).clamp(1024, 1 << 20) as libc::c_uint;
            for fd in (0..max).filter(|&fd| fd != keep) {
                libc::close(fd as RawFd);
            }
        }
    }
}
