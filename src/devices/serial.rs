//! A 16550 UART on the bus, backed by vm-superio's Serial.
//!
//! Interrupts reach the guest through an EventFd registered as an irqfd.
//! Input is fed by the console loop with [`SerialDevice::enqueue`], never
//! more than the 64-byte FIFO has room for; when the guest empties the
//! FIFO, the `rx_ready` EventFd tells the console loop to feed more.

use std::io::{self, Write};

use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Raises the UART's interrupt line by writing its irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Signals the console loop when the guest has drained the input FIFO.
pub struct RxReady(pub EventFd);

impl SerialEvents for RxReady {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // A failed wake-up only delays input until the next one.
        let _ = self.0.write(1);
    }
}

/// Where the guest's serial output goes.
pub type SerialWriter = Box<dyn Write + Send>;

pub struct SerialDevice {
    uart: Serial<IrqTrigger, RxReady, SerialWriter>,
    name: &'static str,
    write_failed: bool,
}

impl SerialDevice {
    pub fn new(name: &'static str, irq: EventFd, rx_ready: EventFd, out: SerialWriter) -> Self {
        Self {
            uart: Serial::with_events(IrqTrigger(irq), RxReady(rx_ready), out),
            name,
            write_failed: false,
        }
    }

    /// Free space in the input FIFO.
    pub fn fifo_room(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues input bytes for the guest; returns how many were taken (fewer
    /// than offered when the FIFO fills, none in loopback mode).
    pub fn enqueue(&mut self, bytes: &[u8]) -> usize {
        if bytes.is_empty() || self.uart.fifo_capacity() == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(e) => {
                log::debug!("{}: input not queued: {e:?}", self.name);
                0
            }
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // A wide access touches consecutive 8-bit registers, as on ISA.
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self.uart.read((offset + i as u64) as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, byte) in data.iter().enumerate() {
            if let Err(e) = self.uart.write((offset + i as u64) as u8, *byte) {
                // Output that cannot be written (a closed pipe, a full
                // disk) is dropped; the guest keeps running. Say so once.
                if !self.write_failed {
                    log::warn!("{}: output lost: {e:?}", self.name);
                    self.write_failed = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    /// A writer whose bytes the test can read back.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn device() -> (SerialDevice, Capture, EventFd, EventFd) {
        let cap = Capture::default();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let rx = EventFd::new(EFD_NONBLOCK).unwrap();
        let d = SerialDevice::new(
            "COM1",
            irq.try_clone().unwrap(),
            rx.try_clone().unwrap(),
            Box::new(cap.clone()),
        );
        (d, cap, irq, rx)
    }

    #[test]
    fn thr_writes_reach_the_writer() {
        let (mut d, cap, _, _) = device();
        d.write(0, b"h");
        d.write(0, b"i");
        assert_eq!(&*cap.0.lock().unwrap(), b"hi");
    }

    #[test]
    fn input_respects_the_fifo_and_signals_when_drained() {
        let (mut d, _, _, rx) = device();
        let room = d.fifo_room();
        assert_eq!(room, 64);
        assert_eq!(d.enqueue(&[b'a'; 100]), 64);
        assert_eq!(d.enqueue(b"more"), 0);
        let mut lsr = [0u8];
        for _ in 0..64 {
            d.read(5, &mut lsr);
            assert_eq!(lsr[0] & 1, 1, "data ready");
            let mut b = [0u8];
            d.read(0, &mut b);
            assert_eq!(b[0], b'a');
        }
        d.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 0);
        assert_eq!(rx.read().unwrap(), 1);
    }

    #[test]
    fn wide_access_touches_consecutive_registers() {
        let (mut d, _, _, _) = device();
        // Scratch register is at offset 7; write it through a 2-byte access at 6.
        d.write(6, &[0x00, 0x5a]);
        let mut b = [0u8];
        d.read(7, &mut b);
        assert_eq!(b[0], 0x5a);
    }

    #[test]
    fn irq_fires_when_thre_interrupt_enabled() {
        let (mut d, _, irq, _) = device();
        d.write(1, &[0x02]); // IER: THR empty
        assert!(irq.read().unwrap() >= 1);
    }
}
