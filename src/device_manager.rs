//! The device manager: what the guest's devices are, planned before any
//! boot data is written, then attached to the VM.
//!
//! It owns the port and MMIO buses, hands out MMIO windows (from the 32-bit
//! device hole) and interrupt lines (IOAPIC pins), and collects what each
//! device needs the guest told: command-line fragments and ACPI DSDT nodes.
//! The boot data is written from the finished plan ([`DeviceManager::cmdline`],
//! [`DeviceManager::dsdt`]), so a device describes itself; nothing else
//! names it. Interrupt eventfds are connected to the VM once it exists
//! ([`DeviceManager::attach`]). Device worker threads are registered here
//! and are stopped and joined with the vCPUs, whatever ends the VM.
//!
//! Adding a device: its file under src/devices, one `add_*` call from the
//! Vmm's device plan, its flag, and its thread's seccomp rules.

use std::sync::Arc;
use std::thread::JoinHandle;

use seccompiler::sock_filter;
use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::layout::{MMIO_DEVICES_SIZE, MMIO_DEVICES_START, MMIO_WINDOW_SIZE};
use crate::bus::{self, Bus, SharedDevice};
use crate::control::{StopReason, VmControl};
use crate::seccomp::ThreadKind;
use crate::vm::{self, Vm};

/// IOAPIC pins the manager hands out; the ones below 5 and those named in
/// [`RESERVED_IRQS`] belong to legacy devices (PIT 0, keyboard 1, cascade
/// 2, COM2 3, COM1 4).
const FIRST_IRQ: u32 = 5;
/// The last pin of KVM's 24-pin IOAPIC.
const LAST_IRQ: u32 = 23;
/// Pins skipped: 8 (RTC), 9 (the ACPI SCI the FADT names), 12 (PS/2
/// mouse), 13 (FPU), 14 and 15 (IDE), which guests may claim for their
/// legacy meaning.
const RESERVED_IRQS: [u32; 6] = [8, 9, 12, 13, 14, 15];

/// Errors planning or attaching devices.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no free MMIO window for {0}")]
    NoMmio(&'static str),
    #[error("no free interrupt line for {0}")]
    NoIrq(&'static str),
    #[error("cannot place {0} on its bus")]
    Bus(&'static str, #[source] bus::Error),
    #[error("cannot make an interrupt eventfd for {0}")]
    EventFd(&'static str, #[source] std::io::Error),
    #[error("cannot connect {0}'s interrupt or notification to the VM")]
    Irqfd(&'static str, #[source] vm::Error),
    #[error("cannot start the {0} thread")]
    Thread(String, #[source] std::io::Error),
}

/// Where an MMIO device was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

/// What a device does with guest memory once it exists.
type MemoryUser = Box<dyn FnOnce(&GuestMemoryMmap)>;

/// A worker thread's body: guest memory and its stop eventfd.
type WorkerFn = Box<dyn FnOnce(GuestMemoryMmap, EventFd) + Send>;

/// A device's thread, told to stop through `stop`.
struct Worker {
    name: String,
    stop: EventFd,
    handle: JoinHandle<()>,
}

pub struct DeviceManager {
    io: Bus,
    mmio: Bus,
    mmio_space: AddressAllocator,
    irqs: IdAllocator,
    /// Interrupt eventfds to connect once the VM exists.
    irqfds: Vec<(&'static str, EventFd, u32)>,
    /// Notification eventfds (MMIO address, datamatch) for then too.
    ioeventfds: Vec<(&'static str, EventFd, u64, u32)>,
    memory_users: Vec<MemoryUser>,
    pending_workers: Vec<(String, ThreadKind, WorkerFn)>,
    /// Installed by each device worker thread before it runs (None:
    /// --no-seccomp); a worker of another kind gets its kind's program.
    worker_filter: Option<&'static [sock_filter]>,
    /// Told when a worker cannot confine itself.
    control: Option<Arc<VmControl>>,
    cmdline: Vec<String>,
    dsdt: Vec<Vec<u8>>,
    workers: Vec<Worker>,
}

impl Default for DeviceManager {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceManager {
    pub fn new() -> Self {
        Self {
            io: Bus::new(),
            mmio: Bus::new(),
            // Both ranges are constants and valid (the tests create them),
            // so these cannot fail.
            mmio_space: AddressAllocator::new(MMIO_DEVICES_START, MMIO_DEVICES_SIZE)
                .unwrap_or_else(|_| unreachable!("the MMIO device range is valid")),
            irqs: IdAllocator::new(FIRST_IRQ, LAST_IRQ)
                .unwrap_or_else(|_| unreachable!("the IRQ range is valid")),
            irqfds: Vec::new(),
            ioeventfds: Vec::new(),
            memory_users: Vec::new(),
            pending_workers: Vec::new(),
            worker_filter: None,
            control: None,
            cmdline: Vec::new(),
            dsdt: Vec::new(),
            workers: Vec::new(),
        }
    }

    /// Worker threads install `filter` before they run; a thread that
    /// cannot stops the VM through `control`.
    pub fn confine_workers(
        &mut self,
        filter: Option<&'static [sock_filter]>,
        control: Arc<VmControl>,
    ) {
        self.worker_filter = filter;
        self.control = Some(control);
    }

    /// Places a port device at `base..base+len`.
    pub fn add_port_device(
        &mut self,
        name: &'static str,
        device: SharedDevice,
        base: u16,
        len: u16,
    ) -> Result<(), Error> {
        log::info!(
            "device {name}: ports {base:#x}-{:#x}",
            u32::from(base) + u32::from(len) - 1
        );
        self.io
            .insert(device, u64::from(base), u64::from(len))
            .map_err(|e| Error::Bus(name, e))
    }

    /// An eventfd that raises `irq` once the VM is attached (a fixed,
    /// legacy line such as COM1's IRQ 4).
    pub fn legacy_irq(&mut self, name: &'static str, irq: u32) -> Result<EventFd, Error> {
        let evt = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::EventFd(name, e))?;
        let ours = evt.try_clone().map_err(|e| Error::EventFd(name, e))?;
        self.irqfds.push((name, ours, irq));
        Ok(evt)
    }

    /// A window of its own and an interrupt line of its own for an MMIO
    /// device; returns where, and the eventfd that raises the line. The
    /// device goes on the bus with [`DeviceManager::insert_mmio`].
    pub fn reserve_mmio(&mut self, name: &'static str) -> Result<(MmioSlot, EventFd), Error> {
        let range = self
            .mmio_space
            .allocate(MMIO_WINDOW_SIZE, MMIO_WINDOW_SIZE, AllocPolicy::FirstMatch)
            .map_err(|_| Error::NoMmio(name))?;
        let irq = self.allocate_irq(name)?;
        let slot = MmioSlot {
            base: range.start(),
            size: MMIO_WINDOW_SIZE,
            irq,
        };
        let evt = self.legacy_irq(name, irq)?;
        Ok((slot, evt))
    }

    /// Puts `device` in the window `slot`.
    pub fn insert_mmio(
        &mut self,
        name: &'static str,
        slot: MmioSlot,
        device: SharedDevice,
    ) -> Result<(), Error> {
        log::info!(
            "device {name}: MMIO {:#x}-{:#x}, IRQ {}",
            slot.base,
            slot.base + slot.size - 1,
            slot.irq
        );
        self.mmio
            .insert(device, slot.base, slot.size)
            .map_err(|e| Error::Bus(name, e))
    }

    /// Once the VM exists, a 4-byte guest write of `datamatch` to MMIO
    /// address `addr` signals `evt` inside KVM, without an exit to kvmini
    /// (a virtio queue notification).
    pub fn ioeventfd(
        &mut self,
        name: &'static str,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), Error> {
        let ours = evt.try_clone().map_err(|e| Error::EventFd(name, e))?;
        self.ioeventfds.push((name, ours, addr, datamatch));
        Ok(())
    }

    /// Runs `f` with guest memory once it exists (at [`DeviceManager::attach`]).
    pub fn on_memory(&mut self, f: impl FnOnce(&GuestMemoryMmap) + 'static) {
        self.memory_users.push(Box::new(f));
    }

    /// Starts a device's worker thread at [`DeviceManager::attach`], with
    /// guest memory and an eventfd that becomes readable when the VM stops
    /// (the worker must return soon after).
    pub fn add_worker<F>(&mut self, name: &str, run: F)
    where
        F: FnOnce(GuestMemoryMmap, EventFd) + Send + 'static,
    {
        self.add_worker_of(name, ThreadKind::Worker, run);
    }

    /// [`DeviceManager::add_worker`] for a thread confined as `kind`
    /// instead of as a plain device worker (a share's, which opens files).
    pub fn add_worker_of<F>(&mut self, name: &str, kind: ThreadKind, run: F)
    where
        F: FnOnce(GuestMemoryMmap, EventFd) + Send + 'static,
    {
        self.pending_workers
            .push((name.to_string(), kind, Box::new(run)));
    }

    fn allocate_irq(&mut self, name: &'static str) -> Result<u32, Error> {
        loop {
            let irq = self.irqs.allocate_id().map_err(|_| Error::NoIrq(name))?;
            if !RESERVED_IRQS.contains(&irq) {
                return Ok(irq);
            }
        }
    }

    /// Adds `fragment` to the kernel command line.
    pub fn add_cmdline(&mut self, fragment: String) {
        self.cmdline.push(fragment);
    }

    /// Adds an AML node (a Device, usually) to the DSDT's `\_SB` scope.
    pub fn add_dsdt(&mut self, aml: Vec<u8>) {
        self.dsdt.push(aml);
    }

    /// `base` followed by every device's command-line fragment.
    pub fn cmdline(&self, base: &str) -> String {
        let mut line = base.to_string();
        for f in &self.cmdline {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(f);
        }
        line
    }

    /// Every device's DSDT node, in the order they were added.
    pub fn dsdt(&self) -> &[Vec<u8>] {
        &self.dsdt
    }

    /// Connects every interrupt and notification eventfd to the VM, hands
    /// guest memory to the devices that asked for it, and starts their
    /// worker threads.
    pub fn attach(&mut self, vm: &Vm, mem: &GuestMemoryMmap) -> Result<(), Error> {
        for (name, evt, irq) in &self.irqfds {
            vm.register_irqfd(evt, *irq)
                .map_err(|e| Error::Irqfd(name, e))?;
        }
        for (name, evt, addr, datamatch) in &self.ioeventfds {
            vm.register_ioeventfd(evt, *addr, *datamatch)
                .map_err(|e| Error::Irqfd(name, e))?;
        }
        for f in self.memory_users.drain(..) {
            f(mem);
        }
        for (name, kind, run) in std::mem::take(&mut self.pending_workers) {
            let mem = mem.clone();
            self.spawn_worker_of(&name, kind, move |stop| run(mem, stop))?;
        }
        Ok(())
    }

    /// Starts a device's worker thread. `run` gets an eventfd that becomes
    /// readable when the VM stops; it must return soon after.
    pub fn spawn_worker<F>(&mut self, name: &str, run: F) -> Result<(), Error>
    where
        F: FnOnce(EventFd) + Send + 'static,
    {
        self.spawn_worker_of(name, ThreadKind::Worker, run)
    }

    fn spawn_worker_of<F>(&mut self, name: &str, kind: ThreadKind, run: F) -> Result<(), Error>
    where
        F: FnOnce(EventFd) + Send + 'static,
    {
        let err = |e| Error::Thread(name.to_string(), e);
        let stop = EventFd::new(EFD_NONBLOCK).map_err(err)?;
        let theirs = stop.try_clone().map_err(err)?;
        let filter = match kind {
            ThreadKind::Worker => self.worker_filter,
            other => self.worker_filter.map(|_| crate::seccomp::filter(other)),
        };
        let control = self.control.clone();
        let thread_name = name.to_string();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                if let Some(f) = filter {
                    if let Err(e) = crate::seccomp::install(f) {
                        if let Some(c) = control {
                            c.stop(StopReason::HostError(format!("{thread_name}: {e}")));
                        }
                        return;
                    }
                }
                run(theirs)
            })
            .map_err(err)?;
        self.workers.push(Worker {
            name: name.to_string(),
            stop,
            handle,
        });
        Ok(())
    }

    /// The buses, for the vCPUs.
    pub fn buses(&mut self) -> (Arc<Bus>, Arc<Bus>) {
        (
            Arc::new(std::mem::take(&mut self.io)),
            Arc::new(std::mem::take(&mut self.mmio)),
        )
    }

    /// Tells every worker to stop and joins it.
    pub fn stop_workers(&mut self) {
        for w in &self.workers {
            let _ = w.stop.write(1);
        }
        for w in self.workers.drain(..) {
            if w.handle.join().is_err() {
                log::error!("the {} thread panicked", w.name);
            }
        }
    }
}

impl Drop for DeviceManager {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Nothing;
    impl crate::bus::BusDevice for Nothing {
        fn read(&mut self, _: u64, data: &mut [u8]) {
            data.fill(0x5a);
        }
        fn write(&mut self, _: u64, _: &[u8]) {}
    }

    fn nothing() -> SharedDevice {
        Arc::new(Mutex::new(Nothing))
    }

    #[test]
    fn mmio_devices_get_their_own_window_and_line() {
        let mut dm = DeviceManager::new();
        let (a, _) = dm.reserve_mmio("a").unwrap();
        dm.insert_mmio("a", a, nothing()).unwrap();
        let (b, _) = dm.reserve_mmio("b").unwrap();
        dm.insert_mmio("b", b, nothing()).unwrap();
        assert_eq!(a.base, MMIO_DEVICES_START);
        assert_eq!(b.base, MMIO_DEVICES_START + MMIO_WINDOW_SIZE);
        assert_eq!((a.irq, b.irq), (5, 6));
        let (_, mmio) = dm.buses();
        let mut buf = [0u8; 4];
        assert!(mmio.read(b.base + 0x10, &mut buf));
        assert_eq!(buf, [0x5a; 4]);
        assert!(!mmio.read(b.base + MMIO_WINDOW_SIZE, &mut buf));
    }

    #[test]
    fn interrupt_lines_skip_legacy_ones_and_run_out_cleanly() {
        let mut dm = DeviceManager::new();
        let mut got = Vec::new();
        let e = loop {
            match dm.reserve_mmio("d") {
                Ok((slot, _)) => got.push(slot.irq),
                Err(e) => break e,
            }
        };
        let want: Vec<u32> = (5..=23).filter(|i| !RESERVED_IRQS.contains(i)).collect();
        assert_eq!(got, want);
        assert!(matches!(e, Error::NoIrq("d")), "{e}");
    }

    #[test]
    fn port_devices_may_not_overlap() {
        let mut dm = DeviceManager::new();
        dm.add_port_device("x", nothing(), 0x3f8, 8).unwrap();
        let e = dm.add_port_device("y", nothing(), 0x3fc, 2).unwrap_err();
        assert!(e.to_string().contains("cannot place y"), "{e}");
    }

    #[test]
    fn fragments_follow_the_base_command_line_in_order() {
        let mut dm = DeviceManager::new();
        assert_eq!(dm.cmdline("console=ttyS0"), "console=ttyS0");
        dm.add_cmdline("a=1".into());
        dm.add_cmdline("b=2".into());
        assert_eq!(dm.cmdline("console=ttyS0"), "console=ttyS0 a=1 b=2");
        assert_eq!(dm.cmdline(""), "a=1 b=2");
    }

    #[test]
    fn workers_are_stopped_and_joined() {
        let mut dm = DeviceManager::new();
        let (tx, rx) = std::sync::mpsc::channel();
        dm.spawn_worker("w", move |stop| {
            let mut pfd = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&stop),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 10_000) };
            tx.send(pfd.revents).unwrap();
        })
        .unwrap();
        drop(dm);
        assert_eq!(rx.try_recv().unwrap(), libc::POLLIN);
    }
}
