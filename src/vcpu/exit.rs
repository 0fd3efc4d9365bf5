//! What to do about a vCPU exit: a free function from the exit to an
//! [`Action`], with no knowledge of any device beyond the two buses.

/// What KVM reports about a debug exit (re-exported for the fuzz target).
pub use kvm_bindings::kvm_debug_exit_arch;

use crate::bus::Bus;
use crate::control::StopReason;

/// A vCPU exit, in the terms kvmini cares about. Port I/O carries the
/// element size, because string I/O (`rep insb/outsw/...`) arrives as one
/// buffer of `size * count` bytes.
#[derive(Debug)]
pub enum Exit<'a> {
    IoIn {
        port: u16,
        size: usize,
        data: &'a mut [u8],
    },
    IoOut {
        port: u16,
        size: usize,
        data: &'a [u8],
    },
    MmioRead {
        addr: u64,
        data: &'a mut [u8],
    },
    MmioWrite {
        addr: u64,
        data: &'a [u8],
    },
    /// KVM_EXIT_HLT: only without an in-kernel irqchip.
    Hlt,
    /// KVM_EXIT_SHUTDOWN: a triple fault.
    Shutdown,
    FailEntry(u64),
    InternalError(u32),
    /// KVM_EXIT_SYSTEM_EVENT with its type.
    SystemEvent(u32),
    /// KVM_EXIT_DEBUG (a breakpoint, watchpoint or single step asked for
    /// with KVM_SET_GUEST_DEBUG), with what KVM reports about it.
    Debug(kvm_debug_exit_arch),
    /// Anything else, by name.
    Other(&'static str),
}

/// The outcome of handling one exit.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Continue,
    Stop(StopReason),
    /// A debug exit: the vCPU parks, paused, and reports it (see
    /// [`super::handle::DebugStop`]).
    DebugStop(kvm_debug_exit_arch),
}

/// How to treat a triple fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TripleFault {
    /// A crash (the default).
    Crash,
    /// A reboot request: the guest kernel was told `reboot=t`.
    Reset,
}

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

/// Splits a port access into its elements. A malformed size (never
/// produced by real hardware) is treated as one access of the whole buffer.
fn elements(len: usize, size: usize) -> usize {
    if size == 0 || !len.is_multiple_of(size) {
        len.max(1)
    } else {
        size
    }
}

/// Handles one exit against the port and MMIO buses.
pub fn handle(exit: Exit, io: &Bus, mmio: &Bus, triple_fault: TripleFault) -> Action {
    match exit {
        Exit::IoIn { port, size, data } => {
            let step = elements(data.len(), size);
            for chunk in data.chunks_mut(step) {
                if !io.read(u64::from(port), chunk) {
                    log::debug!("unclaimed port read {port:#x} ({} bytes)", chunk.len());
                }
            }
            Action::Continue
        }
        Exit::IoOut { port, size, data } => {
            let step = elements(data.len(), size);
            for chunk in data.chunks(step) {
                if !io.write(u64::from(port), chunk) {
                    log::debug!("unclaimed port write {port:#x} <- {chunk:02x?}");
                }
            }
            Action::Continue
        }
        Exit::MmioRead { addr, data } => {
            if !mmio.read(addr, data) {
                log::debug!("unclaimed MMIO read {addr:#x} ({} bytes)", data.len());
            }
            Action::Continue
        }
        Exit::MmioWrite { addr, data } => {
            if !mmio.write(addr, data) {
                log::debug!("unclaimed MMIO write {addr:#x} <- {data:02x?}");
            }
            Action::Continue
        }
        Exit::Debug(arch) => Action::DebugStop(arch),
        Exit::Hlt => Action::Stop(StopReason::Crash(
            "the guest halted and nothing can wake it (no in-kernel irqchip)".into(),
        )),
        Exit::Shutdown => match triple_fault {
            TripleFault::Reset => Action::Stop(StopReason::Reset),
            TripleFault::Crash => Action::Stop(StopReason::Crash("triple fault".into())),
        },
        Exit::FailEntry(reason) => Action::Stop(StopReason::Crash(format!(
            "VM entry failed (hardware reason {reason:#x})"
        ))),
        Exit::InternalError(sub) => Action::Stop(StopReason::Crash(format!(
            "KVM internal error (suberror {sub})"
        ))),
        Exit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN) => Action::Stop(StopReason::PowerOff),
        Exit::SystemEvent(KVM_SYSTEM_EVENT_RESET) => Action::Stop(StopReason::Reset),
        Exit::SystemEvent(KVM_SYSTEM_EVENT_CRASH) => Action::Stop(StopReason::Panic),
        Exit::SystemEvent(other) => {
            log::debug!("ignored system event {other}");
            Action::Continue
        }
        Exit::Other(name) => Action::Stop(StopReason::Crash(format!("unexpected exit {name}"))),
    }
}

/// How many exits of each kind a vCPU made during one boot, for the
/// debug log (`-vv`) at its end.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExitCounts {
    pub io_in: u64,
    pub io_out: u64,
    pub mmio_read: u64,
    pub mmio_write: u64,
    pub hlt: u64,
    /// Kicks: KVM_RUN interrupted by kvmini's own signal.
    pub kicked: u64,
    pub other: u64,
}

impl ExitCounts {
    pub fn count(&mut self, exit: &Exit<'_>) {
        match exit {
            Exit::IoIn { .. } => self.io_in += 1,
            Exit::IoOut { .. } => self.io_out += 1,
            Exit::MmioRead { .. } => self.mmio_read += 1,
            Exit::MmioWrite { .. } => self.mmio_write += 1,
            Exit::Hlt => self.hlt += 1,
            _ => self.other += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.io_in
            + self.io_out
            + self.mmio_read
            + self.mmio_write
            + self.hlt
            + self.kicked
            + self.other
    }
}

impl std::fmt::Display for ExitCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} exits: {} port reads, {} port writes, {} MMIO reads, {} MMIO writes, \
             {} HLT, {} kicks, {} other",
            self.total(),
            self.io_in,
            self.io_out,
            self.mmio_read,
            self.mmio_write,
            self.hlt,
            self.kicked,
            self.other
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_counted_by_kind() {
        let mut c = ExitCounts::default();
        let mut buf = [0u8; 1];
        c.count(&Exit::IoIn {
            port: 0x3fd,
            size: 1,
            data: &mut buf,
        });
        c.count(&Exit::IoOut {
            port: 0x3f8,
            size: 1,
            data: b"x",
        });
        c.count(&Exit::IoOut {
            port: 0x3f8,
            size: 1,
            data: b"y",
        });
        c.count(&Exit::Hlt);
        c.count(&Exit::Shutdown);
        c.kicked += 1;
        assert_eq!(
            (c.io_in, c.io_out, c.hlt, c.other, c.total()),
            (1, 2, 1, 1, 6)
        );
        assert!(c
            .to_string()
            .starts_with("6 exits: 1 port reads, 2 port writes"));
    }
    use crate::bus::BusDevice;
    use std::sync::{Arc, Mutex};

    /// Logs every access with its offset and size.
    #[derive(Default)]
    struct Log(Vec<(char, u64, Vec<u8>)>);

    impl BusDevice for Log {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = offset as u8 + i as u8;
            }
            self.0.push(('r', offset, data.to_vec()));
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push(('w', offset, data.to_vec()));
        }
    }

    fn buses() -> (Bus, Bus, Arc<Mutex<Log>>) {
        let dev = Arc::new(Mutex::new(Log::default()));
        let mut io = Bus::new();
        io.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut mmio = Bus::new();
        mmio.insert(dev.clone(), 0xd000_0000, 0x1000).unwrap();
        (io, mmio, dev)
    }

    #[test]
    fn string_out_is_split_per_element() {
        let (io, mmio, dev) = buses();
        let exit = Exit::IoOut {
            port: 0x3f8,
            size: 1,
            data: b"abc",
        };
        assert_eq!(
            handle(exit, &io, &mmio, TripleFault::Crash),
            Action::Continue
        );
        let log = &dev.lock().unwrap().0;
        assert_eq!(log.len(), 3);
        assert_eq!(log[2], ('w', 0, vec![b'c']));
    }

    #[test]
    fn string_in_of_words_fills_each_element() {
        let (io, mmio, dev) = buses();
        let mut buf = [0u8; 6];
        let exit = Exit::IoIn {
            port: 0x3fa,
            size: 2,
            data: &mut buf,
        };
        handle(exit, &io, &mmio, TripleFault::Crash);
        assert_eq!(buf, [2, 3, 2, 3, 2, 3]);
        assert_eq!(dev.lock().unwrap().0.len(), 3);
    }

    #[test]
    fn dword_access_reaches_device_whole() {
        let (io, mmio, dev) = buses();
        let exit = Exit::IoOut {
            port: 0x3fc,
            size: 4,
            data: &[1, 2, 3, 4],
        };
        handle(exit, &io, &mmio, TripleFault::Crash);
        assert_eq!(dev.lock().unwrap().0[0], ('w', 4, vec![1, 2, 3, 4]));
    }

    #[test]
    fn unclaimed_port_and_mmio_read_all_ones() {
        let (io, mmio, _) = buses();
        let mut d = [0u8; 4];
        let exit = Exit::IoIn {
            port: 0x1234,
            size: 4,
            data: &mut d,
        };
        assert_eq!(
            handle(exit, &io, &mmio, TripleFault::Crash),
            Action::Continue
        );
        assert_eq!(d, [0xff; 4]);
        let mut m = [0u8; 8];
        let exit = Exit::MmioRead {
            addr: 0xe000_0000,
            data: &mut m,
        };
        handle(exit, &io, &mmio, TripleFault::Crash);
        assert_eq!(m, [0xff; 8]);
    }

    #[test]
    fn claimed_mmio_reaches_device_with_offset() {
        let (io, mmio, dev) = buses();
        let exit = Exit::MmioWrite {
            addr: 0xd000_0010,
            data: &[9, 9],
        };
        handle(exit, &io, &mmio, TripleFault::Crash);
        assert_eq!(dev.lock().unwrap().0[0], ('w', 0x10, vec![9, 9]));
    }

    #[test]
    fn malformed_size_does_not_panic() {
        let (io, mmio, _) = buses();
        for size in [0, 3, 7] {
            let mut d = [0u8; 4];
            let exit = Exit::IoIn {
                port: 0x3f8,
                size,
                data: &mut d,
            };
            assert_eq!(
                handle(exit, &io, &mmio, TripleFault::Crash),
                Action::Continue
            );
        }
        let exit = Exit::IoOut {
            port: 0x3f8,
            size: 1,
            data: &[],
        };
        assert_eq!(
            handle(exit, &io, &mmio, TripleFault::Crash),
            Action::Continue
        );
    }

    #[test]
    fn triple_fault_is_crash_or_reset() {
        let (io, mmio, _) = buses();
        assert!(matches!(
            handle(Exit::Shutdown, &io, &mmio, TripleFault::Crash),
            Action::Stop(StopReason::Crash(_))
        ));
        assert_eq!(
            handle(Exit::Shutdown, &io, &mmio, TripleFault::Reset),
            Action::Stop(StopReason::Reset)
        );
    }

    #[test]
    fn fatal_exits_stop_the_vm() {
        let (io, mmio, _) = buses();
        for exit in [
            Exit::FailEntry(0x80),
            Exit::InternalError(1),
            Exit::Hlt,
            Exit::Other("KVM_EXIT_UNKNOWN"),
        ] {
            assert!(matches!(
                handle(exit, &io, &mmio, TripleFault::Crash),
                Action::Stop(StopReason::Crash(_))
            ));
        }
        assert_eq!(
            handle(Exit::SystemEvent(1), &io, &mmio, TripleFault::Crash),
            Action::Stop(StopReason::PowerOff)
        );
    }

    #[test]
    fn a_debug_exit_parks_the_vcpu_with_what_kvm_gave() {
        let (io, mmio, _) = buses();
        let arch = kvm_debug_exit_arch {
            exception: 1,
            pc: 0x10_0040,
            dr6: 0xffff_4ff0,
            dr7: 0x400,
            ..Default::default()
        };
        assert_eq!(
            handle(Exit::Debug(arch), &io, &mmio, TripleFault::Crash),
            Action::DebugStop(arch)
        );
    }
}
