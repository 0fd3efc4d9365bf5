//! Virtio devices: the virtio-mmio transport ([`mmio`]) and the devices
//! behind it. Queues are virtio-queue's; a device's I/O runs on its own
//! worker thread, woken by the queue's notification eventfd (a KVM
//! ioeventfd on the transport's QueueNotify register), never on a vCPU.

pub mod block;
pub mod mmio;
pub mod p9;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// What the transport asks of a device.
pub trait VirtioDevice: Send {
    /// The virtio device ID (VIRTIO_ID_BLOCK, ...).
    fn device_type(&self) -> u32;
    /// The largest size of each of its queues (powers of two).
    fn queue_max_sizes(&self) -> &[u16];
    /// The features it offers, VIRTIO_F_VERSION_1 included.
    fn features(&self) -> u64;
    /// Reads its configuration space at `offset` (bytes past the end read
    /// as zero).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver finished setting up (DRIVER_OK): the device takes its
    /// queues, the features the driver accepted, and how to interrupt. An
    /// error makes the transport report DEVICE_NEEDS_RESET.
    fn activate(
        &mut self,
        queues: Vec<Queue>,
        features: u64,
        interrupt: Interrupt,
    ) -> Result<(), String>;
    /// The driver reset the device: it drops its queues and stops using
    /// guest memory until it is activated again.
    fn reset(&mut self);
}

/// The transport's interrupt status register and the line that raises it.
#[derive(Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    line: Arc<EventFd>,
}

impl Interrupt {
    pub fn new(line: EventFd) -> Self {
        Self {
            status: Arc::new(AtomicU32::new(0)),
            line: Arc::new(line),
        }
    }

    /// The device put buffers in a used ring.
    pub fn used_buffers(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// The device's configuration changed (or it needs a reset).
    pub fn config_changed(&self) {
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::AcqRel);
        // An eventfd write fails only when its counter would overflow,
        // and then the interrupt is pending anyway.
        let _ = self.line.write(1);
    }

    fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }
}
