//! What KVM_RUN returned, in kvmini's terms: a free function from
//! kvm-ioctls' `Result<VcpuExit, Error>` (and the two facts of kvm_run that
//! kvm-ioctls leaves out) to a [`Translated`] value, tested with
//! synthesized exits and errors. It allocates nothing and touches no
//! device: handling the exit is [`super::exit::handle`]'s job.

use kvm_bindings::kvm_run;
use kvm_ioctls::VcpuExit;

use super::exit::Exit;

/// What kvm-ioctls' `VcpuExit` does not carry, read from kvm_run after
/// KVM_RUN returned: meaningful only for the exit that fills it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunInfo {
    /// `io.size`: the element size of a port access (string I/O comes as
    /// one buffer of `size * count` bytes).
    pub io_size: u8,
    /// `internal.suberror` of a KVM_EXIT_INTERNAL_ERROR.
    pub suberror: u32,
}

impl RunInfo {
    /// Reads both fields, whatever the exit was: two loads, no branch.
    ///
    /// # Safety
    /// `run` must point at a live kvm_run mapping. The fields read lie in
    /// the exit union's first eight bytes, apart from the bytes any exit
    /// data slice that kvm-ioctls hands out refers to (MMIO data sits at
    /// offset 8 of the union, port data beyond the struct).
    pub unsafe fn read(run: *const kvm_run) -> Self {
        // SAFETY: guaranteed by the caller; both members are plain
        // integers, so any bit pattern is a valid value.
        unsafe {
            Self {
                io_size: std::ptr::addr_of!((*run).__bindgen_anon_1.io.size).read_volatile(),
                suberror: std::ptr::addr_of!((*run).__bindgen_anon_1.internal.suberror)
                    .read_volatile(),
            }
        }
    }
}

/// The outcome of one KVM_RUN.
#[derive(Debug)]
pub enum Translated<'a> {
    /// An exit to handle.
    Exit(Exit<'a>),
    /// KVM_RUN was interrupted (a kick: EINTR, EAGAIN or KVM_EXIT_INTR).
    /// The caller clears `immediate_exit` and then looks at its commands,
    /// in that order, so that no kick is lost.
    Kicked,
    /// KVM_RUN failed: the vCPU cannot go on.
    Fatal(kvm_ioctls::Error),
}

/// Translates what `VcpuFd::run` returned.
pub fn translate<'a>(
    result: Result<VcpuExit<'a>, kvm_ioctls::Error>,
    info: RunInfo,
) -> Translated<'a> {
    let exit = match result {
        Ok(exit) => exit,
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
            return Translated::Kicked
        }
        Err(e) => return Translated::Fatal(e),
    };
    Translated::Exit(match exit {
        VcpuExit::IoIn(port, data) => Exit::IoIn {
            port,
            size: usize::from(info.io_size),
            data,
        },
        VcpuExit::IoOut(port, data) => Exit::IoOut {
            port,
            size: usize::from(info.io_size),
            data,
        },
        VcpuExit::MmioRead(addr, data) => Exit::MmioRead { addr, data },
        VcpuExit::MmioWrite(addr, data) => Exit::MmioWrite { addr, data },
        VcpuExit::Hlt => Exit::Hlt,
        VcpuExit::Shutdown => Exit::Shutdown,
        VcpuExit::FailEntry(reason, _) => Exit::FailEntry(reason),
        VcpuExit::InternalError => Exit::InternalError(info.suberror),
        VcpuExit::SystemEvent(kind, _) => Exit::SystemEvent(kind),
        VcpuExit::Debug(arch) => Exit::Debug(arch),
        VcpuExit::Intr => return Translated::Kicked,
        other => Exit::Other(exit_name(&other)),
    })
}

/// The KVM name of an exit kvmini does not handle.
fn exit_name(exit: &VcpuExit) -> &'static str {
    match exit {
        VcpuExit::IoOut(..) | VcpuExit::IoIn(..) => "KVM_EXIT_IO",
        VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..) => "KVM_EXIT_MMIO",
        VcpuExit::Unknown => "KVM_EXIT_UNKNOWN",
        VcpuExit::Exception => "KVM_EXIT_EXCEPTION",
        VcpuExit::Hypercall(_) => "KVM_EXIT_HYPERCALL",
        VcpuExit::Debug(_) => "KVM_EXIT_DEBUG",
        VcpuExit::Hlt => "KVM_EXIT_HLT",
        VcpuExit::IrqWindowOpen => "KVM_EXIT_IRQ_WINDOW_OPEN",
        VcpuExit::Shutdown => "KVM_EXIT_SHUTDOWN",
        VcpuExit::FailEntry(..) => "KVM_EXIT_FAIL_ENTRY",
        VcpuExit::Intr => "KVM_EXIT_INTR",
        VcpuExit::SetTpr => "KVM_EXIT_SET_TPR",
        VcpuExit::TprAccess => "KVM_EXIT_TPR_ACCESS",
        VcpuExit::Nmi => "KVM_EXIT_NMI",
        VcpuExit::InternalError => "KVM_EXIT_INTERNAL_ERROR",
        VcpuExit::Watchdog => "KVM_EXIT_WATCHDOG",
        VcpuExit::Epr => "KVM_EXIT_EPR",
        VcpuExit::SystemEvent(..) => "KVM_EXIT_SYSTEM_EVENT",
        VcpuExit::IoapicEoi(_) => "KVM_EXIT_IOAPIC_EOI",
        VcpuExit::Hyperv => "KVM_EXIT_HYPERV",
        VcpuExit::X86Rdmsr(_) => "KVM_EXIT_X86_RDMSR",
        VcpuExit::X86Wrmsr(_) => "KVM_EXIT_X86_WRMSR",
        VcpuExit::MemoryFault { .. } => "KVM_EXIT_MEMORY_FAULT",
        VcpuExit::Unsupported(_) => "an exit kvm-ioctls does not know",
        _ => "an exit of another architecture",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_debug_exit_arch;

    const INFO: RunInfo = RunInfo {
        io_size: 2,
        suberror: 7,
    };

    fn error(errno: i32) -> Result<VcpuExit<'static>, kvm_ioctls::Error> {
        Err(kvm_ioctls::Error::new(errno))
    }

    #[test]
    fn port_io_carries_the_element_size_from_kvm_run() {
        let mut buf = [0u8; 6];
        match translate(Ok(VcpuExit::IoIn(0x3f8, &mut buf)), INFO) {
            Translated::Exit(Exit::IoIn { port, size, data }) => {
                assert_eq!((port, size, data.len()), (0x3f8, 2, 6));
                // The slice is the exit's own buffer: filling it answers
                // the guest.
                data[0] = 0xaa;
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(buf[0], 0xaa);
        let out = *b"abcd";
        let info = RunInfo { io_size: 1, ..INFO };
        match translate(Ok(VcpuExit::IoOut(0xf4, &out)), info) {
            Translated::Exit(Exit::IoOut { port, size, data }) => {
                assert_eq!((port, size, data), (0xf4, 1, &b"abcd"[..]));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mmio_keeps_address_and_data() {
        let mut buf = [0u8; 4];
        assert!(matches!(
            translate(Ok(VcpuExit::MmioRead(0xd000_0000, &mut buf)), INFO),
            Translated::Exit(Exit::MmioRead { addr: 0xd000_0000, data }) if data.len() == 4
        ));
        assert!(matches!(
            translate(Ok(VcpuExit::MmioWrite(0xd000_0010, &[1, 2])), INFO),
            Translated::Exit(Exit::MmioWrite {
                addr: 0xd000_0010,
                data: [1, 2]
            })
        ));
    }

    #[test]
    fn plain_exits_keep_what_kvm_gives() {
        let data = [0u64; 2];
        assert!(matches!(
            translate(Ok(VcpuExit::Hlt), INFO),
            Translated::Exit(Exit::Hlt)
        ));
        assert!(matches!(
            translate(Ok(VcpuExit::Shutdown), INFO),
            Translated::Exit(Exit::Shutdown)
        ));
        assert!(matches!(
            translate(Ok(VcpuExit::FailEntry(0x80, 1)), INFO),
            Translated::Exit(Exit::FailEntry(0x80))
        ));
        // The suberror comes from kvm_run, not from kvm-ioctls.
        assert!(matches!(
            translate(Ok(VcpuExit::InternalError), INFO),
            Translated::Exit(Exit::InternalError(7))
        ));
        assert!(matches!(
            translate(Ok(VcpuExit::SystemEvent(2, &data)), INFO),
            Translated::Exit(Exit::SystemEvent(2))
        ));
        let arch = kvm_debug_exit_arch {
            exception: 1,
            pc: 0x10_0000,
            dr6: 0xffff_4ff0,
            dr7: 0x400,
            ..Default::default()
        };
        match translate(Ok(VcpuExit::Debug(arch)), INFO) {
            Translated::Exit(Exit::Debug(got)) => assert_eq!(got, arch),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn interruptions_are_kicks() {
        for r in [error(libc::EINTR), error(libc::EAGAIN), Ok(VcpuExit::Intr)] {
            assert!(matches!(translate(r, INFO), Translated::Kicked));
        }
    }

    #[test]
    fn other_errors_are_fatal_with_their_errno() {
        for errno in [
            libc::EFAULT,
            libc::EINVAL,
            libc::ENOEXEC,
            libc::EIO,
            libc::EBADF,
        ] {
            match translate(error(errno), INFO) {
                Translated::Fatal(e) => assert_eq!(e.errno(), errno),
                other => panic!("errno {errno}: {other:?}"),
            }
        }
    }

    #[test]
    fn unhandled_exits_go_by_their_kvm_name() {
        for (exit, name) in [
            (VcpuExit::Unknown, "KVM_EXIT_UNKNOWN"),
            (VcpuExit::Exception, "KVM_EXIT_EXCEPTION"),
            (VcpuExit::IrqWindowOpen, "KVM_EXIT_IRQ_WINDOW_OPEN"),
            (VcpuExit::Nmi, "KVM_EXIT_NMI"),
            (VcpuExit::IoapicEoi(3), "KVM_EXIT_IOAPIC_EOI"),
            (
                VcpuExit::MemoryFault {
                    flags: 0,
                    gpa: 0x1000,
                    size: 0x1000,
                },
                "KVM_EXIT_MEMORY_FAULT",
            ),
            (
                VcpuExit::Unsupported(99),
                "an exit kvm-ioctls does not know",
            ),
        ] {
            match translate(Ok(exit), INFO) {
                Translated::Exit(Exit::Other(got)) => assert_eq!(got, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn run_info_reads_the_io_and_internal_members() {
        // SAFETY: kvm_run is plain old data; all-zero is a valid value.
        let mut run: kvm_run = unsafe { std::mem::zeroed() };
        run.__bindgen_anon_1.io.size = 4;
        // SAFETY: a local kvm_run, alive for the call.
        let info = unsafe { RunInfo::read(&run) };
        assert_eq!(info.io_size, 4);
        run.__bindgen_anon_1.internal.suberror = 3;
        // SAFETY: as above.
        assert_eq!(unsafe { RunInfo::read(&run) }.suberror, 3);
    }
}
