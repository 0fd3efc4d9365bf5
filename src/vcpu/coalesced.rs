//! Batched port writes: KVM's coalesced I/O ring, everything about it in
//! one place.
//!
//! What it is for: without the in-kernel irqchip nothing waits for a write
//! to COM1's transmit register to take effect at once (there is no
//! THR-empty interrupt to raise), so KVM may append such writes to a ring
//! shared with userspace instead of exiting for each; a byte of guest
//! output then costs no exit. It is turned on for COM1 only once the guest
//! turns out to print a lot (the console's heavy-output callback), because
//! a registered zone makes KVM wait a normal SRCU grace period when the VM
//! is destroyed. It was kept because it pays on both KVMs measured, real
//! kvm_amd (inside scripts/nested-ci) and these machines' software KVM
//! (the README's Benchmarks section has the figures).
//!
//! What it guarantees: writes reach their devices in guest order. The ring
//! is drained before any exit is handled (an exit's data stays in the
//! kvm_run mapping meanwhile, detached as a [`RawExit`] from the borrow of
//! the vCPU fd that the drain needs) and once more when the vCPU stops, so
//! no batched byte is lost or overtaken by a later unbatched access; and
//! a vCPU is kicked every [`RING_TICK`] while batching is on, so no byte
//! waits in the ring longer than that for the guest's next exit.

use std::cell::Cell;
use std::time::{Duration, Instant};

use kvm_ioctls::{IoEventAddress, VcpuFd, VmFd};

use super::exit::Exit;
use crate::bus::Bus;
use crate::control::VmControl;
use crate::event_loop::{Interest, Subscriber};

/// The longest a batched write waits in the ring when the guest makes no
/// exit of its own (a guest that prints its last line and then computes):
/// every tick the console thread kicks a vCPU, whose thread drains the
/// ring on the way back into the guest. The watchers (`--until`,
/// `--fail-on`) and the back ends therefore see every byte within about
/// this long; the cost is one exit per tick, and only once batching is on.
pub const RING_TICK: Duration = Duration::from_millis(10);

/// The main thread's part of the guarantee above: while `batching` is on,
/// calls `kick` every [`RING_TICK`].
pub struct RingTick<'a> {
    pub batching: &'a Cell<bool>,
    pub kick: &'a dyn Fn(),
    next: Option<Instant>,
}

impl<'a> RingTick<'a> {
    pub fn new(batching: &'a Cell<bool>, kick: &'a dyn Fn()) -> Self {
        Self {
            batching,
            kick,
            next: None,
        }
    }
}

impl Subscriber for RingTick<'_> {
    fn prepare(&mut self, _: &VmControl) {
        if !self.batching.get() {
            return;
        }
        let now = Instant::now();
        match self.next {
            Some(t) if t > now => {}
            Some(_) => {
                (self.kick)();
                self.next = Some(now + RING_TICK);
            }
            None => self.next = Some(now + RING_TICK),
        }
    }

    fn interest(&self, _: &mut Interest) {}

    fn wake_at(&self) -> Option<Instant> {
        self.next.filter(|_| self.batching.get())
    }

    fn ready(&mut self, _: u32, _: libc::c_short, _: &VmControl) {}
}

/// Lets KVM batch writes to `port` in the ring instead of exiting for each.
pub fn batch_port_writes(vm: &VmFd, port: u16) -> Result<(), kvm_ioctls::Error> {
    vm.register_coalesced_mmio(IoEventAddress::Pio(u64::from(port)), 1)
}

/// Hands every batched write to its bus, oldest first.
pub(super) fn drain(fd: &mut VcpuFd, io: &Bus, mmio: &Bus) {
    while let Ok(Some(e)) = fd.coalesced_mmio_read() {
        let data = &e.data[..(e.len as usize).min(e.data.len())];
        // SAFETY: both union members are plain u32s.
        let pio = unsafe { e.__bindgen_anon_1.pio } != 0;
        let bus = if pio { io } else { mmio };
        if !bus.write(e.phys_addr, data) {
            log::debug!("unclaimed coalesced write {:#x}", e.phys_addr);
        }
    }
}

/// An exit whose data is still in the kvm_run mapping, detached from the
/// borrow of the vCPU fd so that the coalesced ring (read through the fd)
/// can be drained before the exit is handled, in guest order.
pub(super) enum RawExit {
    IoIn {
        port: u16,
        size: usize,
        ptr: *mut u8,
        len: usize,
    },
    IoOut {
        port: u16,
        size: usize,
        ptr: *const u8,
        len: usize,
    },
    MmioRead {
        addr: u64,
        ptr: *mut u8,
        len: usize,
    },
    MmioWrite {
        addr: u64,
        ptr: *const u8,
        len: usize,
    },
    Plain(Exit<'static>),
}

impl RawExit {
    pub(super) fn detach(exit: Exit<'_>) -> Self {
        match exit {
            Exit::IoIn { port, size, data } => RawExit::IoIn {
                port,
                size,
                ptr: data.as_mut_ptr(),
                len: data.len(),
            },
            Exit::IoOut { port, size, data } => RawExit::IoOut {
                port,
                size,
                ptr: data.as_ptr(),
                len: data.len(),
            },
            Exit::MmioRead { addr, data } => RawExit::MmioRead {
                addr,
                ptr: data.as_mut_ptr(),
                len: data.len(),
            },
            Exit::MmioWrite { addr, data } => RawExit::MmioWrite {
                addr,
                ptr: data.as_ptr(),
                len: data.len(),
            },
            Exit::Hlt => RawExit::Plain(Exit::Hlt),
            Exit::Shutdown => RawExit::Plain(Exit::Shutdown),
            Exit::FailEntry(r) => RawExit::Plain(Exit::FailEntry(r)),
            Exit::InternalError(s) => RawExit::Plain(Exit::InternalError(s)),
            Exit::SystemEvent(k) => RawExit::Plain(Exit::SystemEvent(k)),
            Exit::Debug(a) => RawExit::Plain(Exit::Debug(a)),
            Exit::Other(n) => RawExit::Plain(Exit::Other(n)),
        }
    }

    /// # Safety
    /// The pointers must still point at `len` valid bytes that nothing else
    /// refers to for the life of the returned exit.
    pub(super) unsafe fn attach<'a>(self) -> Exit<'a> {
        // SAFETY: guaranteed by the caller.
        unsafe {
            match self {
                RawExit::IoIn {
                    port,
                    size,
                    ptr,
                    len,
                } => Exit::IoIn {
                    port,
                    size,
                    data: std::slice::from_raw_parts_mut(ptr, len),
                },
                RawExit::IoOut {
                    port,
                    size,
                    ptr,
                    len,
                } => Exit::IoOut {
                    port,
                    size,
                    data: std::slice::from_raw_parts(ptr, len),
                },
                RawExit::MmioRead { addr, ptr, len } => Exit::MmioRead {
                    addr,
                    data: std::slice::from_raw_parts_mut(ptr, len),
                },
                RawExit::MmioWrite { addr, ptr, len } => Exit::MmioWrite {
                    addr,
                    data: std::slice::from_raw_parts(ptr, len),
                },
                RawExit::Plain(e) => e,
            }
        }
    }
}
