//! `blk` mode: a minimal virtio-blk driver over virtio-mmio (version 2),
//! polling, no interrupts. It finds the first block device in kvmini's
//! MMIO device windows (0xd000_0000, 4 KiB apart), negotiates
//! VIRTIO_F_VERSION_1 (and RO, FLUSH when offered), sets up one queue of 8
//! entries, then:
//!   "blk: capacity <N> sectors\n"
//!   "blk: sector 0: <its first 16 bytes, non-printable as '.'>\n"
//!   writes PATTERN to sector 1 and flushes; on a read-only disk the write
//!   must fail: "blk: read-only, write refused\n", exit 0
//!   reads sector 1 back: "blk: sector 1 written, flushed and read back\n"
//!   reads the sector past the end: "blk: read past the end refused\n", exit 0
//! Any other outcome prints "blk: <what went wrong>\n" and exits 1.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

use crate::io::{self, COM1};

const WINDOWS: u64 = 0xd000_0000;
const WINDOW_SIZE: u64 = 0x1000;
const MAX_WINDOWS: u64 = 16;

const MAGIC: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const STATUS: u64 = 0x070;
const QUEUE_DESC: u64 = 0x080;
const QUEUE_AVAIL: u64 = 0x090;
const QUEUE_USED: u64 = 0x0a0;
const CONFIG: u64 = 0x100;

const S_ACK: u32 = 1;
const S_DRIVER: u32 = 2;
const S_DRIVER_OK: u32 = 4;
const S_FEATURES_OK: u32 = 8;
const S_NEEDS_RESET: u32 = 0x40;

const F_RO: u32 = 1 << 5;
const F_FLUSH: u32 = 1 << 9;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;

const D_NEXT: u16 = 1;
const D_WRITE: u16 = 2;

const QSIZE: usize = 8;

/// What the guest writes to sector 1 (repeated to fill it).
pub const PATTERN: &[u8] = b"kvmini blk pattern, sector one. ";

#[derive(Clone, Copy)]
#[repr(C)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[repr(C, align(16))]
struct DescTable([Desc; QSIZE]);

#[repr(C, align(2))]
struct Avail {
    flags: u16,
    idx: u16,
    ring: [u16; QSIZE],
    used_event: u16,
}

#[repr(C, align(4))]
struct Used {
    flags: u16,
    idx: u16,
    ring: [(u32, u32); QSIZE],
    avail_event: u16,
}

#[repr(C, align(16))]
struct Request {
    kind: u32,
    ioprio: u32,
    sector: u64,
}

const NO_DESC: Desc = Desc {
    addr: 0,
    len: 0,
    flags: 0,
    next: 0,
};

// The queue and the request buffers: statics at their link addresses,
// which are physical addresses (the guest runs identity-mapped). Only this
// single-threaded module touches them, through raw pointers.
static mut DESCS: DescTable = DescTable([NO_DESC; QSIZE]);
static mut AVAIL: Avail = Avail {
    flags: 0,
    idx: 0,
    ring: [0; QSIZE],
    used_event: 0,
};
static mut USED: Used = Used {
    flags: 0,
    idx: 0,
    ring: [(0, 0); QSIZE],
    avail_event: 0,
};
static mut HEADER: Request = Request {
    kind: 0,
    ioprio: 0,
    sector: 0,
};
static mut DATA: [u8; 512] = [0; 512];
static mut STATUS_BYTE: u8 = 0xff;

struct Device {
    base: u64,
}

impl Device {
    fn r32(&self, off: u64) -> u32 {
        // SAFETY: `base` is a virtio-mmio window kvmini mapped (found by
        // its magic value); MMIO registers are read with 32-bit accesses.
        unsafe { read_volatile((self.base + off) as *const u32) }
    }

    fn w32(&self, off: u64, v: u32) {
        // SAFETY: as in r32.
        unsafe { write_volatile((self.base + off) as *mut u32, v) }
    }

    fn w64(&self, off: u64, v: u64) {
        self.w32(off, v as u32);
        self.w32(off + 4, (v >> 32) as u32);
    }
}

fn fail(what: &[u8]) -> ! {
    io::puts(COM1, b"blk: ");
    io::puts(COM1, what);
    io::puts(COM1, b"\n");
    io::exit(1)
}

fn find() -> Option<Device> {
    (0..MAX_WINDOWS)
        .map(|i| Device {
            base: WINDOWS + i * WINDOW_SIZE,
        })
        .find(|d| d.r32(MAGIC) == 0x7472_6976 && d.r32(VERSION) == 2 && d.r32(DEVICE_ID) == 2)
}

/// Sends one request (`data`: whether it carries the 512-byte buffer, and
/// `write_to_guest`: which way) and polls until the device has used it.
fn request(dev: &Device, kind: u32, sector: u64, data: bool, write_to_guest: bool) -> u8 {
    // SAFETY: the statics are only touched here, by one thread; the device
    // reads and writes them only between the notify and the used index
    // moving, with fences on both sides.
    unsafe {
        write_volatile(
            addr_of_mut!(HEADER),
            Request {
                kind,
                ioprio: 0,
                sector,
            },
        );
        write_volatile(addr_of_mut!(STATUS_BYTE), 0xff);
        let descs = addr_of_mut!(DESCS.0) as *mut Desc;
        let status = Desc {
            addr: addr_of!(STATUS_BYTE) as u64,
            len: 1,
            flags: D_WRITE,
            next: 0,
        };
        let header = |next| Desc {
            addr: addr_of!(HEADER) as u64,
            len: 16,
            flags: D_NEXT,
            next,
        };
        if data {
            write_volatile(descs, header(1));
            write_volatile(
                descs.add(1),
                Desc {
                    addr: addr_of!(DATA) as u64,
                    len: 512,
                    flags: D_NEXT | if write_to_guest { D_WRITE } else { 0 },
                    next: 2,
                },
            );
            write_volatile(descs.add(2), status);
        } else {
            write_volatile(descs, header(2));
            write_volatile(descs.add(2), status);
        }
        let idx = read_volatile(addr_of!(AVAIL.idx));
        write_volatile(addr_of_mut!(AVAIL.ring[idx as usize % QSIZE]), 0);
        fence(Ordering::SeqCst);
        write_volatile(addr_of_mut!(AVAIL.idx), idx.wrapping_add(1));
        fence(Ordering::SeqCst);
        dev.w32(QUEUE_NOTIFY, 0);
        while read_volatile(addr_of!(USED.idx)) != idx.wrapping_add(1) {
            core::hint::spin_loop();
        }
        fence(Ordering::SeqCst);
        read_volatile(addr_of!(STATUS_BYTE))
    }
}

fn data() -> *mut [u8; 512] {
    addr_of_mut!(DATA)
}

pub fn run() -> ! {
    let Some(dev) = find() else {
        fail(b"no virtio-blk device")
    };
    dev.w32(STATUS, 0);
    dev.w32(STATUS, S_ACK);
    dev.w32(STATUS, S_ACK | S_DRIVER);
    dev.w32(DEVICE_FEATURES_SEL, 1);
    let high = dev.r32(DEVICE_FEATURES);
    dev.w32(DEVICE_FEATURES_SEL, 0);
    let low = dev.r32(DEVICE_FEATURES);
    if high & 1 == 0 {
        fail(b"no VIRTIO_F_VERSION_1");
    }
    let accepted = low & (F_RO | F_FLUSH);
    dev.w32(DRIVER_FEATURES_SEL, 1);
    dev.w32(DRIVER_FEATURES, 1);
    dev.w32(DRIVER_FEATURES_SEL, 0);
    dev.w32(DRIVER_FEATURES, accepted);
    dev.w32(STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    if dev.r32(STATUS) & S_FEATURES_OK == 0 {
        fail(b"features refused");
    }
    dev.w32(QUEUE_SEL, 0);
    if (dev.r32(QUEUE_NUM_MAX) as usize) < QSIZE {
        fail(b"queue too small");
    }
    dev.w32(QUEUE_NUM, QSIZE as u32);
    dev.w64(QUEUE_DESC, addr_of!(DESCS) as u64);
    dev.w64(QUEUE_AVAIL, addr_of!(AVAIL) as u64);
    dev.w64(QUEUE_USED, addr_of!(USED) as u64);
    dev.w32(QUEUE_READY, 1);
    dev.w32(STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    if dev.r32(STATUS) & (S_NEEDS_RESET | S_DRIVER_OK) != S_DRIVER_OK {
        fail(b"the device did not start");
    }
    let capacity = u64::from(dev.r32(CONFIG)) | u64::from(dev.r32(CONFIG + 4)) << 32;
    let mut digits = [0u8; 20];
    io::puts(COM1, b"blk: capacity ");
    io::puts(COM1, io::fmt_u64(capacity, &mut digits));
    io::puts(COM1, b" sectors\n");

    if request(&dev, T_IN, 0, true, true) != S_OK {
        fail(b"reading sector 0 failed");
    }
    io::puts(COM1, b"blk: sector 0: ");
    for i in 0..16 {
        // SAFETY: DATA is this module's buffer; the device is done with it.
        let b = unsafe { (*data())[i] };
        io::putc(COM1, if (0x20..0x7f).contains(&b) { b } else { b'.' });
    }
    io::puts(COM1, b"\n");

    for i in 0..512 {
        // SAFETY: as above.
        unsafe { (*data())[i] = PATTERN[i % PATTERN.len()] };
    }
    let wrote = request(&dev, T_OUT, 1, true, false);
    if accepted & F_RO != 0 {
        if wrote != S_IOERR {
            fail(b"a read-only disk accepted a write");
        }
        io::puts(COM1, b"blk: read-only, write refused\n");
        io::exit(0);
    }
    if wrote != S_OK {
        fail(b"writing sector 1 failed");
    }
    if accepted & F_FLUSH != 0 && request(&dev, T_FLUSH, 0, false, false) != S_OK {
        fail(b"flush failed");
    }
    for i in 0..512 {
        // SAFETY: as above.
        unsafe { (*data())[i] = 0 };
    }
    if request(&dev, T_IN, 1, true, true) != S_OK {
        fail(b"reading sector 1 back failed");
    }
    for i in 0..512 {
        // SAFETY: as above.
        if unsafe { (*data())[i] } != PATTERN[i % PATTERN.len()] {
            fail(b"sector 1 read back differs");
        }
    }
    io::puts(COM1, b"blk: sector 1 written, flushed and read back\n");
    if request(&dev, T_IN, capacity, true, true) != S_IOERR {
        fail(b"a read past the end succeeded");
    }
    io::puts(COM1, b"blk: read past the end refused\n");
    io::exit(0)
}
