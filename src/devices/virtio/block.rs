//! virtio-blk: a raw disk image behind a virtio-mmio transport.
//!
//! Requests are served on the disk's worker thread, never on a vCPU:
//! IN, OUT, FLUSH (fdatasync: a guest's sync means the data is on the
//! host's disk) and GET_ID. Everything in a request is the guest's and is
//! checked: a chain that leaves guest memory, lacks a header or a status
//! byte, points the wrong way (a device-readable buffer where data must be
//! written, or the reverse), or reaches past the disk's last sector gets
//! VIRTIO_BLK_S_IOERR (or nothing, when there is no byte to put a status
//! in), and no request reads or writes the image outside its own sectors.
//! Data moves through a bounded buffer, whatever lengths the guest claims.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};
use vm_memory::{ByteValued, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{Interrupt, VirtioDevice};

/// Bytes in a sector, the unit of virtio-blk addresses.
pub const SECTOR_SIZE: u64 = 512;
/// Entries in the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments a request may have: a chain holds the header, the
/// segments and the status, and must fit the queue (no indirect
/// descriptors are offered).
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// The most data moved to or from the image in one step.
const CHUNK: usize = 64 * 1024;

/// Errors opening a disk image (all of them bad input).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--disk {0}: cannot open the image")]
    Open(PathBuf, #[source] io::Error),
    #[error("--disk {0}: is a directory, not a disk image")]
    Directory(PathBuf),
    #[error("--disk {0}: {1} bytes is smaller than one 512-byte sector")]
    TooSmall(PathBuf, u64),
    #[error("--disk {0}: {1} bytes is not a multiple of 512 (the sector size)")]
    NotSectors(PathBuf, u64),
    #[error("--disk {0}: the image is in use by another process (it holds a lock on it)")]
    Locked(PathBuf),
    #[error("--disk {0}: the same image is given twice")]
    Twice(PathBuf),
}

/// An open, locked disk image.
pub struct Disk {
    file: File,
    sectors: u64,
    read_only: bool,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
}

impl Disk {
    /// Opens `path` and locks it for the VM's life: exclusively when it
    /// is writable, shared when read-only, so a second VM cannot write an
    /// image another one uses. `serial` (at most 20 bytes) is what GET_ID
    /// answers; Linux shows it in /dev/disk/by-id.
    pub fn open(path: &Path, read_only: bool, serial: &str) -> Result<Disk, Error> {
        if path.is_dir() {
            return Err(Error::Directory(path.into()));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| Error::Open(path.into(), e))?;
        let size = file
            .metadata()
            .map_err(|e| Error::Open(path.into(), e))?
            .len();
        if size < SECTOR_SIZE {
            return Err(Error::TooSmall(path.into(), size));
        }
        if size % SECTOR_SIZE != 0 {
            return Err(Error::NotSectors(path.into(), size));
        }
        let how = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => Error::Locked(path.into()),
                _ => Error::Open(path.into(), e),
            });
        }
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let n = serial.len().min(id.len());
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Ok(Disk {
            file,
            sectors: size / SECTOR_SIZE,
            read_only,
            id,
        })
    }

    /// The image's identity (device and inode), to refuse the same image
    /// twice.
    pub fn identity(&self) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().ok().map(|m| (m.dev(), m.ino()))
    }

    pub fn sectors(&self) -> u64 {
        self.sectors
    }
}

/// The request header the driver puts first (virtio_blk_outhdr).
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct RequestHeader {
    kind: u32,
    ioprio: u32,
    sector: u64,
}

// SAFETY: plain integers, no padding (4 + 4 + 8 bytes), any bit pattern
// is valid.
unsafe impl ByteValued for RequestHeader {}

/// What the worker is told by the transport (through the device).
enum Command {
    Activate(Queue, Interrupt),
    /// Drop the queue, then answer: after the answer the worker touches
    /// guest memory no more until the next activation.
    Reset(Sender<()>),
}

/// How long a reset waits for the worker to finish the request it is
/// serving (a slow image, a stalled network filesystem) before it goes on.
const RESET_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The device half that the transport owns (on the vCPUs' side).
pub struct Block {
    sectors: u64,
    read_only: bool,
    commands: Sender<Command>,
    wake: EventFd,
}

/// The worker half: serves the queue on its own thread.
pub struct BlockWorker {
    disk: Arc<Disk>,
    commands: Receiver<Command>,
    wake: EventFd,
}

/// A block device for `disk`: the device for the transport, and the
/// worker for the device manager to run. The disk (and its lock) outlives
/// any one boot of the guest.
pub fn new(disk: Arc<Disk>) -> io::Result<(Block, BlockWorker)> {
    let (tx, rx) = mpsc::channel();
    let wake = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?;
    let block = Block {
        sectors: disk.sectors,
        read_only: disk.read_only,
        commands: tx,
        wake: wake.try_clone()?,
    };
    Ok((
        block,
        BlockWorker {
            disk,
            commands: rx,
            wake,
        },
    ))
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        // SEG_MAX: without it Linux sends one segment per request, which
        // for a buffer of scattered pages is one 4 KiB request per page.
        let mut f = 1u64 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_SEG_MAX;
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // virtio_blk_config: `capacity` (sectors, 8 bytes at 0), `size_max`
        // (4 bytes at 8, not offered: zero) and `seg_max` (4 bytes at 12);
        // the rest reads as zero.
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&self.sectors.to_le_bytes());
        config[12..].copy_from_slice(&SEG_MAX.to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|at| config.get(usize::try_from(at).ok()?))
                .copied()
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, mut queues: Vec<Queue>, _: u64, irq: Interrupt) -> Result<(), String> {
        let q = queues.pop().ok_or("no request queue")?;
        self.commands
            .send(Command::Activate(q, irq))
            .map_err(|_| "the disk's worker thread has gone")?;
        let _ = self.wake.write(1);
        Ok(())
    }

    fn reset(&mut self) {
        let (done, answer) = mpsc::channel();
        if self.commands.send(Command::Reset(done)).is_ok() {
            let _ = self.wake.write(1);
            if answer.recv_timeout(RESET_WAIT).is_err() {
                log::warn!("virtio-blk: the worker did not stop within {RESET_WAIT:?} of a reset");
            }
        }
    }
}

impl BlockWorker {
    /// Serves requests until `stop` is readable: `notify` is the queue's
    /// notification eventfd, `mem` guest memory.
    pub fn run(self, mem: GuestMemoryMmap, notify: EventFd, stop: EventFd) {
        let mut active: Option<(Queue, Interrupt)> = None;
        let mut pfds =
            [stop.as_raw_fd(), self.wake.as_raw_fd(), notify.as_raw_fd()].map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        loop {
            // SAFETY: three valid pollfds.
            let n = unsafe { libc::poll(pfds.as_mut_ptr(), 3, -1) };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("virtio-blk: poll failed: {}", io::Error::last_os_error());
                return;
            }
            if pfds[0].revents != 0 {
                return;
            }
            if pfds[1].revents != 0 {
                let _ = self.wake.read();
                while let Ok(c) = self.commands.try_recv() {
                    active = match c {
                        Command::Activate(q, irq) => Some((q, irq)),
                        Command::Reset(done) => {
                            let _ = done.send(());
                            None
                        }
                    };
                }
            }
            if pfds[2].revents != 0 {
                let _ = notify.read();
            }
            if let Some((q, irq)) = active.as_mut() {
                if process_queue(q, &mem, &self.disk) {
                    irq.used_buffers();
                }
            }
        }
    }
}

/// Serves every request on `queue`; true if any was completed (the driver
/// then needs an interrupt).
pub fn process_queue(queue: &mut Queue, mem: &GuestMemoryMmap, disk: &Disk) -> bool {
    let mut used = false;
    // A chain's head index is the guest's; so is the ring's idx. The queue
    // bounds both (virtio-queue checks heads against the size and stops a
    // chain at the size's length), and each pop moves on by one, so this
    // loop ends after at most the ring's worth of entries per notification.
    for _ in 0..queue.size() {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        let len = serve(chain, mem, disk);
        if queue.add_used(mem, head, len).is_err() {
            log::debug!("virtio-blk: cannot complete request {head}");
            break;
        }
        used = true;
    }
    used
}

/// Serves one request; returns the bytes written into the chain.
fn serve(chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap, disk: &Disk) -> u32 {
    let (Ok(mut reader), Ok(writer)) = (Reader::new(mem, chain.clone()), Writer::new(mem, chain))
    else {
        // Part of the chain lies outside guest memory.
        return 0;
    };
    // The status byte is the last writable byte.
    let Some(data_len) = writer.available_bytes().checked_sub(1) else {
        return 0;
    };
    let mut writer = writer;
    let Ok(mut status_writer) = writer.split_at(data_len) else {
        return 0;
    };
    let (status, written) = match reader.read_obj::<RequestHeader>() {
        Ok(h) => request(h, &mut reader, &mut writer, data_len, disk),
        Err(_) => (VIRTIO_BLK_S_IOERR, 0),
    };
    let _ = status_writer.write_all(&[status as u8]);
    (written + 1) as u32
}

/// Carries out request `h`; returns its status and the data bytes written
/// into the guest's buffers.
fn request(
    h: RequestHeader,
    reader: &mut Reader,
    writer: &mut Writer,
    data_len: usize,
    disk: &Disk,
) -> (u32, usize) {
    let start = h.sector.checked_mul(SECTOR_SIZE);
    let fits = |len: usize| {
        start
            .and_then(|s| s.checked_add(len as u64))
            .is_some_and(|end| end <= disk.sectors * SECTOR_SIZE)
    };
    match h.kind {
        VIRTIO_BLK_T_IN => {
            if !fits(data_len) || !data_len.is_multiple_of(SECTOR_SIZE as usize) {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            let at = start.unwrap_or(0);
            match copy_out(disk, at, data_len, writer) {
                Ok(()) => (VIRTIO_BLK_S_OK, data_len),
                Err(e) => {
                    log::debug!("virtio-blk: read at {at}: {e}");
                    (VIRTIO_BLK_S_IOERR, 0)
                }
            }
        }
        VIRTIO_BLK_T_OUT => {
            let len = reader.available_bytes();
            if disk.read_only || !fits(len) || !len.is_multiple_of(SECTOR_SIZE as usize) {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            let at = start.unwrap_or(0);
            match copy_in(disk, at, len, reader) {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(e) => {
                    log::debug!("virtio-blk: write at {at}: {e}");
                    (VIRTIO_BLK_S_IOERR, 0)
                }
            }
        }
        VIRTIO_BLK_T_FLUSH => {
            if disk.read_only {
                return (VIRTIO_BLK_S_OK, 0);
            }
            match disk.file.sync_data() {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(_) => (VIRTIO_BLK_S_IOERR, 0),
            }
        }
        VIRTIO_BLK_T_GET_ID => {
            let n = disk.id.len().min(data_len);
            match writer.write_all(&disk.id[..n]) {
                Ok(()) => (VIRTIO_BLK_S_OK, n),
                Err(_) => (VIRTIO_BLK_S_IOERR, 0),
            }
        }
        _ => (VIRTIO_BLK_S_UNSUPP, 0),
    }
}

/// Image bytes `at..at+len` into the guest's buffers, a chunk at a time.
fn copy_out(disk: &Disk, mut at: u64, mut len: usize, writer: &mut Writer) -> io::Result<()> {
    let mut buf = vec![0u8; len.min(CHUNK)];
    while len > 0 {
        let n = len.min(buf.len());
        disk.file.read_exact_at(&mut buf[..n], at)?;
        writer.write_all(&buf[..n])?;
        at += n as u64;
        len -= n;
    }
    Ok(())
}

/// The guest's buffers into image bytes `at..at+len`, a chunk at a time.
fn copy_in(disk: &Disk, mut at: u64, mut len: usize, reader: &mut Reader) -> io::Result<()> {
    let mut buf = vec![0u8; len.min(CHUNK)];
    while len > 0 {
        let n = len.min(buf.len());
        reader.read_exact(&mut buf[..n])?;
        disk.file.write_all_at(&buf[..n], at)?;
        at += n as u64;
        len -= n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    struct Fixture {
        mem: GuestMemoryMmap,
        dir: std::path::PathBuf,
    }

    impl Fixture {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("kvmini-blk-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
            Fixture { mem, dir }
        }

        fn image(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let p = self.dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Puts one chain of `descs` (addr, len, flags) on a fresh queue, serves
    /// it and returns the used length and the queue's used index.
    fn run(mem: &GuestMemoryMmap, disk: &Disk, descs: &[(u64, u32, u16)]) -> (u32, u16) {
        let mq = MockSplitQueue::create(mem, GuestAddress(0x8_0000), 16);
        let table: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let next = if i + 1 < descs.len() { i as u16 + 1 } else { 0 };
                let flags = if i + 1 < descs.len() {
                    flags | F_NEXT
                } else {
                    flags
                };
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
            })
            .collect();
        mq.build_desc_chain(&table).unwrap();
        let mut q: Queue = mq.create_queue().unwrap();
        assert!(process_queue(&mut q, mem, disk));
        let used = mq.used().ring().ref_at(0).unwrap().load();
        (used.len(), mq.used().idx().load())
    }

    fn header(mem: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
        mem.write_obj(
            RequestHeader {
                kind,
                ioprio: 0,
                sector,
            },
            GuestAddress(at),
        )
        .unwrap();
    }

    fn status(mem: &GuestMemoryMmap, at: u64) -> u32 {
        u32::from(mem.read_obj::<u8>(GuestAddress(at)).unwrap())
    }

    fn image_of(sectors: usize) -> Vec<u8> {
        (0..sectors * 512)
            .map(|i| (i / 512) as u8 ^ i as u8)
            .collect()
    }

    #[test]
    fn reads_and_writes_sectors() {
        let f = Fixture::new("rw");
        let img = image_of(8);
        let path = f.image("d.img", &img);
        let disk = Disk::open(&path, false, "serial-1").unwrap();
        // Read sectors 2..4 into 0x1000.
        header(&f.mem, 0x100, VIRTIO_BLK_T_IN, 2);
        let (len, idx) = run(
            &f.mem,
            &disk,
            &[
                (0x100, 16, 0),
                (0x1000, 1024, F_WRITE),
                (0x2000, 1, F_WRITE),
            ],
        );
        assert_eq!((len, idx), (1025, 1));
        assert_eq!(status(&f.mem, 0x2000), VIRTIO_BLK_S_OK);
        let mut got = vec![0u8; 1024];
        f.mem.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
        assert_eq!(got, img[1024..2048]);
        // Write a pattern to sector 7, then flush.
        f.mem
            .write_slice(&[0xab; 512], GuestAddress(0x3000))
            .unwrap();
        header(&f.mem, 0x100, VIRTIO_BLK_T_OUT, 7);
        run(
            &f.mem,
            &disk,
            &[(0x100, 16, 0), (0x3000, 512, 0), (0x2000, 1, F_WRITE)],
        );
        assert_eq!(status(&f.mem, 0x2000), VIRTIO_BLK_S_OK);
        header(&f.mem, 0x100, VIRTIO_BLK_T_FLUSH, 0);
        run(&f.mem, &disk, &[(0x100, 16, 0), (0x2000, 1, F_WRITE)]);
        assert_eq!(status(&f.mem, 0x2000), VIRTIO_BLK_S_OK);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk[7 * 512..], [0xab; 512]);
        assert_eq!(on_disk[..7 * 512], img[..7 * 512]);
        // GET_ID.
        header(&f.mem, 0x100, VIRTIO_BLK_T_GET_ID, 0);
        run(
            &f.mem,
            &disk,
            &[(0x100, 16, 0), (0x4000, 20, F_WRITE), (0x2000, 1, F_WRITE)],
        );
        let mut id = [0u8; 8];
        f.mem.read_slice(&mut id, GuestAddress(0x4000)).unwrap();
        assert_eq!(&id, b"serial-1");
    }

    #[test]
    fn hostile_requests_fail_without_touching_other_sectors() {
        let f = Fixture::new("hostile");
        let img = image_of(4);
        let path = f.image("d.img", &img);
        let disk = Disk::open(&path, false, "").unwrap();
        f.mem
            .write_slice(&[0xcd; 1024], GuestAddress(0x3000))
            .unwrap();
        let err = VIRTIO_BLK_S_IOERR;
        type Case = (u32, u64, Vec<(u64, u32, u16)>, u32);
        let cases: Vec<Case> = vec![
            // Past the end: sector 3 + 2 sectors of a 4-sector disk.
            (
                VIRTIO_BLK_T_OUT,
                3,
                vec![(0x100, 16, 0), (0x3000, 1024, 0), (0x2000, 1, F_WRITE)],
                err,
            ),
            (
                VIRTIO_BLK_T_IN,
                4,
                vec![(0x100, 16, 0), (0x3000, 512, F_WRITE), (0x2000, 1, F_WRITE)],
                err,
            ),
            // A sector number whose byte offset overflows.
            (
                VIRTIO_BLK_T_IN,
                u64::MAX / 256,
                vec![(0x100, 16, 0), (0x3000, 512, F_WRITE), (0x2000, 1, F_WRITE)],
                err,
            ),
            // Not whole sectors.
            (
                VIRTIO_BLK_T_OUT,
                0,
                vec![(0x100, 16, 0), (0x3000, 100, 0), (0x2000, 1, F_WRITE)],
                err,
            ),
            // A truncated header.
            (
                VIRTIO_BLK_T_OUT,
                0,
                vec![(0x100, 8, 0), (0x2000, 1, F_WRITE)],
                err,
            ),
            // An unknown request.
            (
                99,
                0,
                vec![(0x100, 16, 0), (0x2000, 1, F_WRITE)],
                VIRTIO_BLK_S_UNSUPP,
            ),
        ];
        for (kind, sector, descs, want) in cases {
            header(&f.mem, 0x100, kind, sector);
            f.mem.write_obj(0xffu8, GuestAddress(0x2000)).unwrap();
            run(&f.mem, &disk, &descs);
            assert_eq!(status(&f.mem, 0x2000), want, "kind {kind} sector {sector}");
        }
        assert_eq!(std::fs::read(&path).unwrap(), img, "the image changed");
        // Buffers outside guest memory, or no status byte at all: the
        // request completes with nothing written.
        header(&f.mem, 0x100, VIRTIO_BLK_T_IN, 0);
        assert_eq!(
            run(
                &f.mem,
                &disk,
                &[
                    (0x100, 16, 0),
                    (0xf_fff0, 512, F_WRITE),
                    (0x2000, 1, F_WRITE)
                ]
            )
            .0,
            0
        );
        assert_eq!(run(&f.mem, &disk, &[(0x100, 16, 0)]).0, 0);
    }

    #[test]
    fn config_space_has_capacity_and_seg_max() {
        let f = Fixture::new("config");
        let path = f.image("d.img", &image_of(3));
        let (block, _) = new(Arc::new(Disk::open(&path, false, "").unwrap())).unwrap();
        assert_ne!(block.features() & (1 << VIRTIO_BLK_F_SEG_MAX), 0);
        let mut config = [0xffu8; 24];
        block.read_config(0, &mut config);
        assert_eq!(u64::from_le_bytes(config[..8].try_into().unwrap()), 3);
        assert_eq!(u32::from_le_bytes(config[8..12].try_into().unwrap()), 0);
        assert_eq!(u32::from_le_bytes(config[12..16].try_into().unwrap()), 254);
        assert_eq!(config[16..], [0; 8]);
        // A read at an odd offset, and one past everything.
        let mut b = [0u8; 2];
        block.read_config(12, &mut b);
        assert_eq!(b, [254, 0]);
        block.read_config(u64::MAX, &mut b);
        assert_eq!(b, [0, 0]);
    }

    #[test]
    fn a_read_only_disk_refuses_writes() {
        let f = Fixture::new("ro");
        let img = image_of(2);
        let path = f.image("d.img", &img);
        let disk = Disk::open(&path, true, "").unwrap();
        let (block, _) = new(Arc::new(Disk::open(&path, true, "").unwrap())).unwrap();
        assert_ne!(block.features() & (1 << VIRTIO_BLK_F_RO), 0);
        header(&f.mem, 0x100, VIRTIO_BLK_T_OUT, 0);
        run(
            &f.mem,
            &disk,
            &[(0x100, 16, 0), (0x3000, 512, 0), (0x2000, 1, F_WRITE)],
        );
        assert_eq!(status(&f.mem, 0x2000), VIRTIO_BLK_S_IOERR);
        assert_eq!(std::fs::read(&path).unwrap(), img);
    }

    #[test]
    fn images_are_checked_and_locked() {
        let f = Fixture::new("open");
        let small = f.image("small", &[0; 100]);
        assert!(matches!(
            Disk::open(&small, false, ""),
            Err(Error::TooSmall(..))
        ));
        let odd = f.image("odd", &[0; 700]);
        assert!(matches!(
            Disk::open(&odd, false, ""),
            Err(Error::NotSectors(..))
        ));
        assert!(matches!(
            Disk::open(&f.dir, false, ""),
            Err(Error::Directory(..))
        ));
        assert!(matches!(
            Disk::open(&f.dir.join("none"), false, ""),
            Err(Error::Open(..))
        ));
        let good = f.image("good", &[0; 1024]);
        let first = Disk::open(&good, false, "").unwrap();
        let e = Disk::open(&good, false, "").err().expect("a second writer");
        assert!(e.to_string().contains("in use by another process"), "{e}");
        assert!(
            Disk::open(&good, true, "").is_err(),
            "a reader beside a writer"
        );
        drop(first);
        let r1 = Disk::open(&good, true, "").unwrap();
        let _r2 = Disk::open(&good, true, "").unwrap();
        assert!(
            Disk::open(&good, false, "").is_err(),
            "a writer beside readers"
        );
        assert_eq!(r1.sectors(), 2);
        let mut cap = [0u8; 8];
        new(Arc::new(Disk::open(&good, true, "").unwrap()))
            .unwrap()
            .0
            .read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 2);
    }
}
