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
    /// The console's "room for input" eventfd, also written when the guest
    /// takes the UART out of loopback (vm-superio refuses input in it).
    rx_ready: EventFd,
    /// MCR's loopback bit as the guest last wrote it.
    loopback: bool,
}

impl SerialDevice {
    pub fn new(
        name: &'static str,
        irq: EventFd,
        rx_ready: EventFd,
        out: SerialWriter,
    ) -> io::Result<Self> {
        Ok(Self {
            rx_ready: rx_ready.try_clone()?,
            uart: Serial::with_events(IrqTrigger(irq), RxReady(rx_ready), out),
            name,
            write_failed: false,
            loopback: false,
        })
    }

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
            let reg = (offset + i as u64) as u8;
            if reg == MCR && self.loopback && byte & MCR_LOOP == 0 {
                // Input refused while in loopback can be taken now: wake
                // the console to offer it again.
                let _ = self.rx_ready.write(1);
            }
            if reg == MCR {
                self.loopback = byte & MCR_LOOP != 0;
            }
            if let Err(e) = self.uart.write(reg, *byte) {
                // Output that cannot be written (a closed pipe, a full
                // disk) is dropped; the guest keeps running. Say so once.
                if !self.write_failed {
                    log::warn!("{}: output lost: {e:?}", self.name);
                    self.write_failed = true;
                }
            }
        }
    }

    /// Back to the registers the UART is created with, through its own
    /// register interface (vm-superio has no reset): line control 8N1 with
    /// the default divisor, interrupts off, OUT2 on, loopback off, the
    /// input FIFO emptied and the pending interrupt read away. Output
    /// already written stays written.
    fn reset(&mut self) {
        let mut set = |reg: u8, value: u8| {
            let _ = self.uart.write(reg, value);
        };
        set(LCR, LCR_8N1);
        set(MCR, MCR_OUT2);
        set(IER, 0);
        set(LCR, LCR_8N1 | LCR_DLAB);
        set(DATA, DEFAULT_DIVISOR_LOW);
        set(IER, 0);
        set(LCR, LCR_8N1);
        set(SCR, 0);
        // The FIFO holds at most 64 bytes; the bound only guards the loop.
        for _ in 0..=64 {
            if self.uart.read(LSR) & LSR_DATA_READY == 0 {
                break;
            }
            self.uart.read(DATA);
        }
        self.uart.read(IIR);
        self.write_failed = false;
    }
}

// Register offsets, and the values of a UART at reset (16550 and
// vm-superio alike).
const DATA: u8 = 0;
const IER: u8 = 1;
const IIR: u8 = 2;
const LCR: u8 = 3;
const MCR: u8 = 4;
const LSR: u8 = 5;
const SCR: u8 = 7;
const LCR_8N1: u8 = 0x03;
const LCR_DLAB: u8 = 0x80;
const MCR_OUT2: u8 = 0x08;
const MCR_LOOP: u8 = 0x10;
const LSR_DATA_READY: u8 = 0x01;
/// vm-superio's default divisor (9600 baud).
const DEFAULT_DIVISOR_LOW: u8 = 0x0c;

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
        )
        .unwrap();
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

    #[test]
    fn reset_gives_back_the_state_of_a_new_uart() {
        let (mut d, cap, irq, _) = device();
        let fresh = d.uart.state();
        d.write(3, &[0x80]); // DLAB
        d.write(0, &[0x01]); // divisor 115200
        d.write(3, &[0x1b]); // 8E1
        d.write(1, &[0x0f]); // every interrupt
        d.write(4, &[0x10]); // loopback
        d.write(7, &[0x5a]);
        d.write(4, &[0x08]);
        d.enqueue(b"typed before the reboot");
        d.write(0, b"x");
        assert_ne!(d.uart.state(), fresh);
        d.reset();
        assert_eq!(d.uart.state(), fresh);
        assert_eq!(&*cap.0.lock().unwrap(), b"x", "output written stays");
        let _ = irq.read();
        d.write(0, b"y");
        assert!(irq.read().is_err(), "no interrupt enabled after the reset");
    }
}
