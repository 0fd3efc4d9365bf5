//! `p9` mode: a minimal 9P2000.L client over virtio-9p (virtio-mmio
//! version 2), polling, no interrupts. It finds the first 9p device in
//! kvmini's MMIO device windows, negotiates VIRTIO_F_VERSION_1 and
//! VIRTIO_9P_MOUNT_TAG, sets up one queue, then:
//!   "p9: tag <TAG>\n"
//!   Tversion, Tattach; walks to hello.txt, opens and reads it:
//!   "p9: hello.txt: <its first line, non-printable as '.'>\n"
//!   walks `..` from the root, which must be the root:
//!   "p9: .. of the root is the root\n"
//!   walks the name "../etc", which must be refused:
//!   "p9: a path as a name refused\n"
//!   creates guest.txt and writes PATTERN to it; on a read-only share the
//!   create must fail with EROFS: "p9: read-only, create refused\n", exit 0
//!   "p9: guest.txt written\n", exit 0
//! Any other outcome prints "p9: <what went wrong>\n" and exits 1.

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

const F_MOUNT_TAG: u32 = 1;
const ID_9P: u32 = 9;

const D_NEXT: u16 = 1;
const D_WRITE: u16 = 2;

const QSIZE: usize = 8;

const TLOPEN: u8 = 12;
const TLCREATE: u8 = 14;
const TVERSION: u8 = 100;
const TATTACH: u8 = 104;
const TWALK: u8 = 110;
const TREAD: u8 = 116;
const TWRITE: u8 = 118;
const TCLUNK: u8 = 120;
const RLERROR: u8 = 7;
const EROFS: u32 = 30;

/// What the guest writes to guest.txt.
pub const PATTERN: &[u8] = b"written by the kvmini tiny guest over 9p\n";

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

const NO_DESC: Desc = Desc {
    addr: 0,
    len: 0,
    flags: 0,
    next: 0,
};

// The queue, the request and the reply: statics at their link addresses,
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
static mut REQ: [u8; 512] = [0; 512];
static mut REPLY: [u8; 1024] = [0; 1024];

struct Device {
    base: u64,
}

impl Device {
    fn r32(&self, off: u64) -> u32 {
        // SAFETY: `base` is a virtio-mmio window kvmini mapped (found by
        // its magic value); MMIO registers are read with 32-bit accesses.
        unsafe { read_volatile((self.base + off) as *const u32) }
    }

    fn r8(&self, off: u64) -> u8 {
        // SAFETY: as in r32; the configuration space is read bytewise.
        unsafe { read_volatile((self.base + off) as *const u8) }
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
    io::puts(COM1, b"p9: ");
    io::puts(COM1, what);
    io::puts(COM1, b"\n");
    io::exit(1)
}

fn find() -> Option<Device> {
    (0..MAX_WINDOWS)
        .map(|i| Device {
            base: WINDOWS + i * WINDOW_SIZE,
        })
        .find(|d| d.r32(MAGIC) == 0x7472_6976 && d.r32(VERSION) == 2 && d.r32(DEVICE_ID) == ID_9P)
}

/// A request being written into REQ.
struct Msg {
    len: usize,
}

impl Msg {
    fn new(ty: u8, tag: u16) -> Msg {
        let mut m = Msg { len: 0 };
        m.u32(0);
        m.bytes(&[ty]);
        m.bytes(&tag.to_le_bytes());
        m
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Msg {
        for &x in b {
            if self.len >= 512 {
                fail(b"a request too long for its buffer");
            }
            // SAFETY: REQ is this module's buffer, `len` is within it, and
            // the device is not using it between requests.
            unsafe { (addr_of_mut!(REQ) as *mut u8).add(self.len).write(x) };
            self.len += 1;
        }
        self
    }

    fn u32(&mut self, v: u32) -> &mut Msg {
        self.bytes(&v.to_le_bytes())
    }

    fn u64(&mut self, v: u64) -> &mut Msg {
        self.bytes(&v.to_le_bytes())
    }

    fn str(&mut self, s: &[u8]) -> &mut Msg {
        self.bytes(&(s.len() as u16).to_le_bytes()).bytes(s)
    }
}

/// Sends the request in REQ and polls until the device has used it;
/// returns the reply's type and the reply.
fn rpc(dev: &Device, m: &mut Msg) -> (u8, &'static [u8]) {
    let len = m.len as u32;
    // SAFETY: the statics are only touched here, by one thread; the device
    // reads and writes them only between the notify and the used index
    // moving, with fences on both sides.
    unsafe {
        core::ptr::copy_nonoverlapping(len.to_le_bytes().as_ptr(), addr_of_mut!(REQ) as *mut u8, 4);
        let descs = addr_of_mut!(DESCS.0) as *mut Desc;
        write_volatile(
            descs,
            Desc {
                addr: addr_of!(REQ) as u64,
                len,
                flags: D_NEXT,
                next: 1,
            },
        );
        write_volatile(
            descs.add(1),
            Desc {
                addr: addr_of!(REPLY) as u64,
                len: 1024,
                flags: D_WRITE,
                next: 0,
            },
        );
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
        let used = read_volatile(addr_of!(USED.ring[idx as usize % QSIZE])).1 as usize;
        let reply: &'static [u8] =
            core::slice::from_raw_parts(addr_of!(REPLY) as *const u8, used.min(1024));
        if reply.len() < 7 {
            fail(b"a reply without a header");
        }
        (reply[4], reply)
    }
}

fn expect(dev: &Device, m: &mut Msg, ty: u8, what: &[u8]) -> &'static [u8] {
    let (t, r) = rpc(dev, m);
    if t != ty + 1 {
        fail(what);
    }
    r
}

fn u64_at(r: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&r[at..at + 8]);
    u64::from_le_bytes(b)
}

pub fn run() -> ! {
    let Some(dev) = find() else {
        fail(b"no virtio-9p device")
    };
    dev.w32(STATUS, 0);
    dev.w32(STATUS, S_ACK);
    dev.w32(STATUS, S_ACK | S_DRIVER);
    dev.w32(DEVICE_FEATURES_SEL, 1);
    let high = dev.r32(DEVICE_FEATURES);
    dev.w32(DEVICE_FEATURES_SEL, 0);
    let low = dev.r32(DEVICE_FEATURES);
    if high & 1 == 0 || low & F_MOUNT_TAG == 0 {
        fail(b"no VIRTIO_F_VERSION_1 or no mount tag");
    }
    dev.w32(DRIVER_FEATURES_SEL, 1);
    dev.w32(DRIVER_FEATURES, 1);
    dev.w32(DRIVER_FEATURES_SEL, 0);
    dev.w32(DRIVER_FEATURES, F_MOUNT_TAG);
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
    let tag_len = u16::from_le_bytes([dev.r8(CONFIG), dev.r8(CONFIG + 1)]);
    io::puts(COM1, b"p9: tag ");
    for i in 0..u64::from(tag_len.min(64)) {
        io::putc(COM1, dev.r8(CONFIG + 2 + i));
    }
    io::puts(COM1, b"\n");

    let r = expect(
        &dev,
        Msg::new(TVERSION, 0xffff).u32(8192).str(b"9P2000.L"),
        TVERSION,
        b"Tversion failed",
    );
    if r.len() < 19 || &r[13..] != b"9P2000.L" {
        fail(b"the server speaks no 9P2000.L");
    }
    let r = expect(
        &dev,
        Msg::new(TATTACH, 1)
            .u32(1)
            .u32(u32::MAX)
            .str(b"")
            .str(b"")
            .u32(0),
        TATTACH,
        b"Tattach failed",
    );
    let root = u64_at(r, 7 + 5);

    let mut walk = Msg::new(TWALK, 2);
    walk.u32(1)
        .u32(2)
        .bytes(&1u16.to_le_bytes())
        .str(b"hello.txt");
    expect(&dev, &mut walk, TWALK, b"no hello.txt");
    expect(
        &dev,
        Msg::new(TLOPEN, 3).u32(2).u32(0),
        TLOPEN,
        b"Tlopen failed",
    );
    let r = expect(
        &dev,
        Msg::new(TREAD, 4).u32(2).u64(0).u32(256),
        TREAD,
        b"Tread failed",
    );
    io::puts(COM1, b"p9: hello.txt: ");
    for &b in r[11..].iter().take_while(|&&b| b != b'\n') {
        io::putc(COM1, if (0x20..0x7f).contains(&b) { b } else { b'.' });
    }
    io::puts(COM1, b"\n");

    let mut up = Msg::new(TWALK, 5);
    up.u32(1).u32(3).bytes(&1u16.to_le_bytes()).str(b"..");
    let r = expect(&dev, &mut up, TWALK, b"walking .. failed");
    if r.len() < 22 || u64_at(r, 9 + 5) != root {
        fail(b".. of the root is not the root");
    }
    io::puts(COM1, b"p9: .. of the root is the root\n");

    let mut path = Msg::new(TWALK, 6);
    path.u32(1).u32(4).bytes(&1u16.to_le_bytes()).str(b"../etc");
    if rpc(&dev, &mut path).0 != RLERROR {
        fail(b"a path as a name was walked");
    }
    io::puts(COM1, b"p9: a path as a name refused\n");

    let mut clone = Msg::new(TWALK, 7);
    clone.u32(1).u32(5).bytes(&0u16.to_le_bytes());
    expect(&dev, &mut clone, TWALK, b"cloning the root failed");
    let mut create = Msg::new(TLCREATE, 8);
    create.u32(5).str(b"guest.txt").u32(2).u32(0o644).u32(0);
    let (t, r) = rpc(&dev, &mut create);
    if t == RLERROR && r.len() >= 11 && u32::from_le_bytes([r[7], r[8], r[9], r[10]]) == EROFS {
        io::puts(COM1, b"p9: read-only, create refused\n");
        io::exit(0);
    }
    if t != TLCREATE + 1 {
        fail(b"Tlcreate failed");
    }
    let mut write = Msg::new(TWRITE, 9);
    write.u32(5).u64(0).u32(PATTERN.len() as u32).bytes(PATTERN);
    let r = expect(&dev, &mut write, TWRITE, b"Twrite failed");
    if r.len() < 11 || u32::from_le_bytes([r[7], r[8], r[9], r[10]]) as usize != PATTERN.len() {
        fail(b"a short write");
    }
    expect(&dev, Msg::new(TCLUNK, 10).u32(5), TCLUNK, b"Tclunk failed");
    io::puts(COM1, b"p9: guest.txt written\n");
    io::exit(0)
}
