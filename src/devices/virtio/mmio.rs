//! The virtio-mmio transport, version 2 (virtio 1.x "modern" only): the
//! register file a driver programs through its MMIO window.
//!
//! Every value comes from the guest and is treated as hostile: register
//! accesses of the wrong size or alignment read as zero and are ignored,
//! an out-of-range queue selector makes queue registers inert, queue sizes
//! that are zero, above the maximum or not powers of two are refused (the
//! queue stays unusable), features the device did not offer keep
//! FEATURES_OK clear, and a device that cannot be activated (a queue whose
//! rings lie outside guest memory, for instance) gets DEVICE_NEEDS_RESET
//! and a configuration interrupt instead of running. Nothing here panics.

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{Interrupt, VirtioDevice};
use crate::bus::BusDevice;

/// "virt", little-endian.
const MAGIC: u32 = 0x7472_6976;
/// The modern register layout.
const VERSION: u32 = 2;
/// kvmini's vendor ID ("KVMI" would not fit the PCI-style 16 bits).
const VENDOR_ID: u32 = 0x4b56;

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    /// Guest memory, once it exists (set before the guest runs).
    mem: Option<GuestMemoryMmap>,
    queues: Vec<Queue>,
    /// Written when the driver notifies a queue through the register
    /// (KVM's ioeventfd takes those writes first when it is registered).
    queue_evts: Vec<EventFd>,
    interrupt: Interrupt,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
}

impl MmioTransport {
    /// The transport for `device`, raising `interrupt`; `queue_evts` are
    /// the queues' notification eventfds, one per queue.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        interrupt: Interrupt,
        queue_evts: Vec<EventFd>,
    ) -> Result<Self, String> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).map_err(|e| format!("queue of {max}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if queue_evts.len() != queues.len() {
            return Err("one notification eventfd per queue".into());
        }
        Ok(Self {
            device,
            mem: None,
            queues,
            queue_evts,
            interrupt,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
        })
    }

    /// Gives the transport guest memory, to check queues against.
    pub fn set_memory(&mut self, mem: GuestMemoryMmap) {
        self.mem = Some(mem);
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only while the driver sets the device
    /// up: after FEATURES_OK and before DRIVER_OK.
    fn queue_writable(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.status & (VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED) == 0
    }

    fn read_register(&mut self, offset: u32) -> u32 {
        let device_features = self.device.features() | (1u64 << VIRTIO_F_VERSION_1);
        let queue_max = |t: &Self| {
            t.queues
                .get(t.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size()))
        };
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => device_features as u32,
                1 => (device_features >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => queue_max(self),
            VIRTIO_MMIO_QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        let writable = self.queue_writable();
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            // Features are negotiated before FEATURES_OK, never after.
            VIRTIO_MMIO_DRIVER_FEATURES if self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0 => {
                let v = u64::from(value);
                match self.driver_features_sel {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                    _ => {}
                }
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NUM if writable => {
                if let Some(q) = self.selected_queue() {
                    // virtio-queue refuses sizes that are zero, too large
                    // or not powers of two; the queue keeps its old size
                    // and the driver's is_valid check fails later.
                    if u16::try_from(value).map(|v| q.try_set_size(v)).is_err() {
                        log::debug!("virtio-mmio: queue size {value} refused");
                    }
                }
            }
            VIRTIO_MMIO_QUEUE_READY if writable => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW if writable => {
                self.with_queue(|q| q.set_desc_table_address(Some(value), None))
            }
            VIRTIO_MMIO_QUEUE_DESC_HIGH if writable => {
                self.with_queue(|q| q.set_desc_table_address(None, Some(value)))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW if writable => {
                self.with_queue(|q| q.set_avail_ring_address(Some(value), None))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH if writable => {
                self.with_queue(|q| q.set_avail_ring_address(None, Some(value)))
            }
            VIRTIO_MMIO_QUEUE_USED_LOW if writable => {
                self.with_queue(|q| q.set_used_ring_address(Some(value), None))
            }
            VIRTIO_MMIO_QUEUE_USED_HIGH if writable => {
                self.with_queue(|q| q.set_used_ring_address(None, Some(value)))
            }
            // Only a running device is notified; before DRIVER_OK a
            // notification has nothing to wake.
            VIRTIO_MMIO_QUEUE_NOTIFY if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 => {
                if let Some(evt) = self.queue_evts.get(value as usize) {
                    let _ = evt.write(1);
                }
            }
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.set_status(value),
            _ => {}
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset_device();
            return;
        }
        // The driver may only add bits (except by resetting).
        if value & self.status != self.status {
            return;
        }
        let new = value & !self.status;
        let mut status = value;
        if new & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let offered = self.device.features() | (1u64 << VIRTIO_F_VERSION_1);
            let ok = self.driver_features & !offered == 0
                && self.driver_features & (1u64 << VIRTIO_F_VERSION_1) != 0
                && self.status & VIRTIO_CONFIG_S_DRIVER != 0;
            if !ok {
                status &= !VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        if new & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            if status & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
                return;
            }
            if let Err(e) = self.activate() {
                log::debug!("virtio-mmio: cannot activate the device: {e}");
                status = (status & !VIRTIO_CONFIG_S_DRIVER_OK) | VIRTIO_CONFIG_S_NEEDS_RESET;
                self.status = status;
                self.interrupt.config_changed();
                return;
            }
        }
        self.status = status;
    }

    fn activate(&mut self) -> Result<(), String> {
        let mem = self.mem.as_ref().ok_or("no guest memory")?;
        let mut queues = Vec::new();
        for (i, q) in self.queues.iter().enumerate() {
            if !q.ready() {
                return Err(format!("queue {i} is not ready"));
            }
            if !q.is_valid(mem) {
                return Err(format!(
                    "queue {i} lies outside guest memory or has a bad size"
                ));
            }
            // The device gets its own copy; the transport's stays for
            // reading back registers.
            let copy = Queue::try_from(q.state()).map_err(|e| format!("queue {i}: {e}"))?;
            queues.push(copy);
        }
        self.device
            .activate(queues, self.driver_features, self.interrupt.clone())
    }

    /// The device reset the driver asks for by writing 0 to Status, and
    /// the machine's reset line.
    fn reset_device(&mut self) {
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.device.reset();
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.ack(u32::MAX);
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device
                .read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        // Registers are 32 bits wide, read whole and aligned.
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        let v = self.read_register(offset as u32);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // The configuration space of kvmini's devices is read-only.
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_register(offset as u32, u32::from_le_bytes(bytes));
    }

    fn reset(&mut self) {
        self.reset_device();
    }
}

/// The offset of the QueueNotify register, for the ioeventfd.
pub const NOTIFY_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;

/// The DSDT node that makes Linux's virtio_mmio driver find device
/// `index` in `slot` (`_HID "LNRO0005"`, its window and its interrupt):
/// distribution kernels build virtio-mmio without command-line devices.
pub fn dsdt_node(index: u8, slot: crate::device_manager::MmioSlot) -> Vec<u8> {
    use acpi_tables::{aml, Aml};
    let name = format!("V{index:03}");
    let mem = aml::Memory32Fixed::new(true, slot.base as u32, slot.size as u32);
    let irq = aml::Interrupt::new(true, true, false, false, slot.irq);
    let crs = aml::ResourceTemplate::new(vec![&mem, &irq]);
    let uid = u32::from(index);
    let hid = aml::Name::new("_HID".into(), &"LNRO0005");
    let uid = aml::Name::new("_UID".into(), &uid);
    let crs = aml::Name::new("_CRS".into(), &crs);
    let device = aml::Device::new(name.as_str().into(), vec![&hid, &uid, &crs]);
    let mut bytes = Vec::new();
    device.to_aml_bytes(&mut bytes);
    bytes
}

/// The driver's setup steps, for tests (and the fuzz target) to drive a
/// transport the way Linux's virtio_mmio driver does.
#[doc(hidden)]
pub mod driver {
    use super::*;

    pub fn write(t: &mut MmioTransport, offset: u32, value: u32) {
        t.write(u64::from(offset), &value.to_le_bytes());
    }

    pub fn read(t: &mut MmioTransport, offset: u32) -> u32 {
        let mut b = [0u8; 4];
        t.read(u64::from(offset), &mut b);
        u32::from_le_bytes(b)
    }

    /// Resets, acknowledges, negotiates `features`, sets up queue 0 at
    /// `desc`/`avail`/`used` with `size` entries and sets DRIVER_OK;
    /// returns the final status.
    pub fn bring_up(
        t: &mut MmioTransport,
        features: u64,
        size: u32,
        desc: u64,
        avail: u64,
        used: u64,
    ) -> u32 {
        write(t, VIRTIO_MMIO_STATUS, 0);
        write(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        write(
            t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        for sel in 0..2 {
            write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
            write(
                t,
                VIRTIO_MMIO_DRIVER_FEATURES,
                (features >> (32 * sel)) as u32,
            );
        }
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        write(t, VIRTIO_MMIO_STATUS, s);
        if read(t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            return read(t, VIRTIO_MMIO_STATUS);
        }
        write(t, VIRTIO_MMIO_QUEUE_SEL, 0);
        write(t, VIRTIO_MMIO_QUEUE_NUM, size);
        for (lo, hi, addr) in [
            (
                VIRTIO_MMIO_QUEUE_DESC_LOW,
                VIRTIO_MMIO_QUEUE_DESC_HIGH,
                desc,
            ),
            (
                VIRTIO_MMIO_QUEUE_AVAIL_LOW,
                VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
                avail,
            ),
            (
                VIRTIO_MMIO_QUEUE_USED_LOW,
                VIRTIO_MMIO_QUEUE_USED_HIGH,
                used,
            ),
        ] {
            write(t, lo, addr as u32);
            write(t, hi, (addr >> 32) as u32);
        }
        write(t, VIRTIO_MMIO_QUEUE_READY, 1);
        write(t, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
        read(t, VIRTIO_MMIO_STATUS)
    }
}

#[cfg(test)]
mod tests {
    use super::driver::*;
    use super::*;
    use std::sync::{Arc, Mutex};
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[derive(Default)]
    struct Log {
        activated: Vec<(usize, u64)>,
        resets: usize,
    }

    struct Fake(Arc<Mutex<Log>>);

    impl VirtioDevice for Fake {
        fn device_type(&self) -> u32 {
            2
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            1 << 5
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8);
            }
        }
        fn activate(&mut self, q: Vec<Queue>, features: u64, _: Interrupt) -> Result<(), String> {
            self.0.lock().unwrap().activated.push((q.len(), features));
            Ok(())
        }
        fn reset(&mut self) {
            self.0.lock().unwrap().resets += 1;
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Log>>, EventFd, EventFd) {
        let log = Arc::new(Mutex::new(Log::default()));
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let notify = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut t = MmioTransport::new(
            Box::new(Fake(log.clone())),
            Interrupt::new(irq.try_clone().unwrap()),
            vec![notify.try_clone().unwrap()],
        )
        .unwrap();
        t.set_memory(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
        (t, log, irq, notify)
    }

    const V1: u64 = 1 << VIRTIO_F_VERSION_1;

    #[test]
    fn identifies_itself_as_a_modern_device() {
        let (mut t, ..) = transport();
        assert_eq!(read(&mut t, VIRTIO_MMIO_MAGIC_VALUE), MAGIC);
        assert_eq!(read(&mut t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(read(&mut t, VIRTIO_MMIO_DEVICE_ID), 2);
        write(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(read(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 1);
        write(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        assert_eq!(read(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 1 << 5);
        assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
        let mut b = [0u8; 2];
        t.read(u64::from(VIRTIO_MMIO_CONFIG) + 4, &mut b);
        assert_eq!(b, [4, 5]);
    }

    #[test]
    fn a_driver_brings_the_device_up_and_notifies_it() {
        let (mut t, log, _, notify) = transport();
        let s = bring_up(&mut t, V1 | 1 << 5, 16, 0x1000, 0x2000, 0x3000);
        assert_ne!(s & VIRTIO_CONFIG_S_DRIVER_OK, 0, "status {s:#x}");
        assert_eq!(log.lock().unwrap().activated, vec![(1, V1 | 1 << 5)]);
        write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert_eq!(notify.read().unwrap(), 1);
        // A notification for a queue that does not exist is ignored.
        write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 7);
        assert!(notify.read().is_err());
        write(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(log.lock().unwrap().resets, 1);
        assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    }

    #[test]
    fn features_not_offered_or_legacy_drivers_are_refused() {
        for features in [V1 | 1 << 6, 1 << 5] {
            let (mut t, log, ..) = transport();
            let s = bring_up(&mut t, features, 16, 0x1000, 0x2000, 0x3000);
            assert_eq!(
                s & (VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK),
                0
            );
            assert!(log.lock().unwrap().activated.is_empty());
        }
    }

    #[test]
    fn hostile_queues_need_a_reset_instead_of_running() {
        // Rings outside the 1 MiB of memory; a size that is not a power of
        // two (refused, so the queue keeps 16: valid); size 0.
        for (size, desc, activates) in [
            (16, 0x1_0000_0000u64, false),
            (16, 0xff_fff0, false),
            (12, 0x1000, true),
            (0, 0x1000, true),
        ] {
            let (mut t, log, irq, _) = transport();
            let s = bring_up(&mut t, V1, size, desc, 0x2000, 0x3000);
            let activated = !log.lock().unwrap().activated.is_empty();
            assert_eq!(activated, activates, "size {size} desc {desc:#x}");
            if !activates {
                assert_ne!(s & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
                assert_eq!(s & VIRTIO_CONFIG_S_DRIVER_OK, 0);
                assert_eq!(irq.read().unwrap(), 1);
                assert_eq!(
                    read(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
                    VIRTIO_MMIO_INT_CONFIG
                );
                write(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_CONFIG);
                assert_eq!(read(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
            }
        }
    }

    #[test]
    fn odd_accesses_and_late_queue_writes_change_nothing() {
        let (mut t, log, _, notify) = transport();
        // Before DRIVER_OK a notification wakes nothing.
        write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert!(notify.read().is_err());
        // A byte read of a register is zero; a byte write is ignored.
        let mut b = [0xffu8; 1];
        t.read(0, &mut b);
        assert_eq!(b, [0]);
        t.write(u64::from(VIRTIO_MMIO_STATUS), &[1]);
        assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), 0);
        // Unaligned 32-bit access.
        t.write(u64::from(VIRTIO_MMIO_STATUS) + 1, &1u32.to_le_bytes());
        assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), 0);
        bring_up(&mut t, V1, 16, 0x1000, 0x2000, 0x3000);
        // After DRIVER_OK the queue's registers are frozen.
        write(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
        assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
        // A selector past the queues reads as nothing.
        write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 9);
        assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
        // Clearing a status bit without a reset is refused.
        write(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        assert_ne!(
            read(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_DRIVER_OK,
            0
        );
        assert_eq!(log.lock().unwrap().activated.len(), 1);
    }
}
