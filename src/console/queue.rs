//! The path of serial output from a vCPU thread to the console thread.
//!
//! The vCPU only appends bytes to a buffer; the console thread drains it
//! in batches and does every slow thing (writing to the back end, the log,
//! pattern matching). A wake-up costs a syscall only when the console is
//! idle, so a flood of output costs the vCPU a memcpy per byte. The buffer
//! is bounded: when the host cannot keep up, the vCPU waits, as a guest
//! waits on a real UART, and memory does not grow with guest output.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::trace::BootTrace;

/// Most bytes held between the guest and the host.
pub const QUEUE_LIMIT: usize = 256 * 1024;

pub struct OutQueue {
    buf: Mutex<Vec<u8>>,
    drained: Condvar,
    wake: EventFd,
    /// The console thread is about to sleep and wants a wake-up.
    waiting: AtomicBool,
    /// The console thread is gone: producers must not wait for it.
    closed: AtomicBool,
}

impl OutQueue {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            buf: Mutex::new(Vec::with_capacity(4096)),
            drained: Condvar::new(),
            wake: EventFd::new(EFD_NONBLOCK)?,
            waiting: AtomicBool::new(true),
            closed: AtomicBool::new(false),
        })
    }

    /// Producer side: appends `bytes`, waiting while the queue is full.
    pub fn push(&self, bytes: &[u8]) {
        let mut buf = self.buf.lock().unwrap_or_else(PoisonError::into_inner);
        while buf.len() >= QUEUE_LIMIT && !self.closed.load(Ordering::Acquire) {
            self.notify();
            buf = self
                .drained
                .wait(buf)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if buf.len() < QUEUE_LIMIT {
            buf.extend_from_slice(bytes);
        }
        drop(buf);
        self.notify();
    }

    fn notify(&self) {
        if self.waiting.swap(false, Ordering::SeqCst) {
            // A lost wake-up is impossible: the flag is re-armed before
            // the consumer's last look at the buffer.
            let _ = self.wake.write(1);
        }
    }

    /// Consumer side: takes everything queued (into `out`, which is
    /// cleared first). Re-arms the wake-up when the queue was empty.
    pub fn drain(&self, out: &mut Vec<u8>) {
        out.clear();
        let _ = self.wake.read();
        let mut buf = self.buf.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut *buf, out);
        if out.is_empty() {
            self.waiting.store(true, Ordering::SeqCst);
        }
        drop(buf);
        self.drained.notify_all();
    }

    /// After the last drain: producers stop waiting for room.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.drained.notify_all();
    }

    /// Undoes [`close`](Self::close), for the next boot of a guest
    /// rebooted in place (its vCPUs are parked until then).
    pub fn reopen(&self) {
        self.closed.store(false, Ordering::Release);
    }

    /// Readable when output is waiting.
    pub fn eventfd(&self) -> &EventFd {
        &self.wake
    }
}

/// The vCPU end of a queue, as the UART's writer.
pub struct QueueWriter {
    queue: Arc<OutQueue>,
    trace: Option<Arc<BootTrace>>,
}

impl QueueWriter {
    pub fn new(queue: Arc<OutQueue>, trace: Option<Arc<BootTrace>>) -> Self {
        Self { queue, trace }
    }
}

impl Write for QueueWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(t) = &self.trace {
            t.serial_byte();
        }
        self.queue.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn bytes_arrive_in_order_and_wakeups_are_armed() {
        let q = OutQueue::new().unwrap();
        let mut out = Vec::new();
        q.drain(&mut out);
        assert!(out.is_empty());
        q.push(b"ab");
        assert_eq!(q.eventfd().read().unwrap(), 1, "idle consumer is woken");
        q.push(b"c");
        q.drain(&mut out);
        assert_eq!(out, b"abc");
        q.drain(&mut out);
        assert!(out.is_empty());
        q.push(b"d");
        q.drain(&mut out);
        assert_eq!(out, b"d");
    }

    #[test]
    fn full_queue_blocks_the_producer_until_drained() {
        let q = Arc::new(OutQueue::new().unwrap());
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || {
                for _ in 0..4 {
                    q.push(&vec![7u8; QUEUE_LIMIT / 2]);
                }
            })
        };
        let mut total = 0;
        let mut out = Vec::new();
        while total < 2 * QUEUE_LIMIT {
            q.drain(&mut out);
            assert!(out.len() <= QUEUE_LIMIT + QUEUE_LIMIT / 2);
            total += out.len();
            std::thread::yield_now();
        }
        producer.join().unwrap();
        assert_eq!(total, 2 * QUEUE_LIMIT);
    }

    #[test]
    fn closed_queue_never_blocks() {
        let q = OutQueue::new().unwrap();
        q.close();
        q.push(&vec![0u8; QUEUE_LIMIT]);
        q.push(&vec![0u8; QUEUE_LIMIT]);
        let mut out = Vec::new();
        q.drain(&mut out);
        assert_eq!(out.len(), QUEUE_LIMIT);
    }
}
