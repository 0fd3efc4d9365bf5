//! virtio-9p: a host directory shared with the guest over 9P2000.L.
//!
//! The 9P server is the p9 crate's; every request passes kvmini's gate
//! first ([`confine`]), which keeps the guest inside the share (see its
//! header for the rules). Requests are served on the share's worker
//! thread, never on a vCPU, one descriptor chain at a time: the chain's
//! readable part is the request, its writable part the reply. A chain
//! that leaves guest memory, has no room for an error reply, or holds
//! less than a message header is completed with 0 bytes; a message whose
//! size field is below the header, above the negotiated size or beyond
//! the chain is answered with Rlerror (EINVAL or EMSGSIZE). Nothing the
//! guest sends allocates more than one message (at most 64 KiB and a
//! header) at a time.
//!
//! Mount it in a Linux guest with
//! `mount -t 9p -o trans=virtio,version=9p2000.L TAG /mnt`.

pub mod confine;
pub mod wire;

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};

use virtio_bindings::virtio_ids::VIRTIO_ID_9P;
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{Interrupt, VirtioDevice};
use confine::Gate;

/// Entries in the request queue (Linux's 9p transport keeps at most 128
/// requests in flight).
pub const QUEUE_SIZE: u16 = 128;
/// The feature bit saying the configuration space holds a mount tag
/// (linux/virtio_9p.h; virtio-bindings does not name it).
pub const VIRTIO_9P_MOUNT_TAG: u32 = 0;
/// The longest tag a share may have.
pub const MAX_TAG_LEN: usize = 31;
/// Fids one share may hold at most (each may hold two host descriptors).
pub const MAX_FIDS: usize = 8192;
/// Descriptors kept free for the rest of kvmini when the fid limit is
/// cut to fit RLIMIT_NOFILE.
const RESERVED_FDS: u64 = 256;
/// The fewest fids a share gets, however low the descriptor limit.
const MIN_FIDS: usize = 64;

/// Errors opening a share (all of them bad input).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--share {0}: cannot open the directory")]
    Open(PathBuf, #[source] io::Error),
    #[error("--share {0}: not a directory")]
    NotDirectory(PathBuf),
    #[error("--share {0}: tag={1}: {2}")]
    Tag(PathBuf, String, &'static str),
    #[error("--share {0}: tag={1} is already another share's")]
    TagTwice(PathBuf, String),
}

/// Why `tag` cannot name a share, if it cannot: Linux finds the device by
/// it (`mount -t 9p TAG`), and kvmini's flag separates options by commas.
pub fn check_tag(tag: &str) -> Result<(), &'static str> {
    if tag.is_empty() {
        return Err("a tag may not be empty");
    }
    if tag.len() > MAX_TAG_LEN {
        return Err("a tag has at most 31 bytes");
    }
    if !tag.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
        return Err("a tag is printable ASCII without spaces or commas");
    }
    Ok(())
}

/// A checked share: its directory (absolute, symlinks resolved), tag and
/// mode.
#[derive(Debug, Clone)]
pub struct Share {
    pub root: PathBuf,
    pub tag: String,
    pub read_only: bool,
    /// The most fids the guest may hold on it.
    pub max_fids: usize,
}

impl Share {
    /// Checks that `path` is a directory kvmini can read, and resolves it
    /// once: p9 opens the root by path at every attach, without following
    /// a symlink there.
    pub fn open(path: &Path, tag: &str, read_only: bool) -> Result<Share, Error> {
        check_tag(tag).map_err(|why| Error::Tag(path.into(), tag.into(), why))?;
        let root = std::fs::canonicalize(path).map_err(|e| Error::Open(path.into(), e))?;
        let meta = std::fs::metadata(&root).map_err(|e| Error::Open(path.into(), e))?;
        if !meta.is_dir() {
            return Err(Error::NotDirectory(path.into()));
        }
        // Listing it needs read permission, which opening it checks.
        std::fs::read_dir(&root).map_err(|e| Error::Open(path.into(), e))?;
        Ok(Share {
            root,
            tag: tag.into(),
            read_only,
            max_fids: MAX_FIDS,
        })
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard one and cuts each of
/// `shares`' fid limits so that all of them together (two descriptors a
/// fid) leave [`RESERVED_FDS`] for the rest of kvmini: a guest that opens
/// files by the thousand gets EMFILE from its share, and no other part of
/// kvmini runs out of descriptors.
pub fn fit_descriptor_limit(shares: &mut [Share]) {
    if shares.is_empty() {
        return;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    let per_share = lim.rlim_cur.saturating_sub(RESERVED_FDS) / 2 / shares.len() as u64;
    let fids = usize::try_from(per_share)
        .unwrap_or(usize::MAX)
        .clamp(MIN_FIDS, MAX_FIDS);
    for s in shares {
        s.max_fids = s.max_fids.min(fids);
    }
}

/// What the worker is told by the transport (through the device).
enum Command {
    Activate(Queue, Interrupt),
    /// Drop the queue and every fid, then answer.
    Reset(Sender<()>),
}

/// How long a reset waits for the worker to finish the request it is
/// serving before it goes on.
const RESET_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The device half that the transport owns (on the vCPUs' side).
pub struct P9 {
    /// le16 tag length, then the tag (struct virtio_9p_config).
    config: Vec<u8>,
    commands: Sender<Command>,
    wake: EventFd,
}

/// The worker half: the gate and server, on the share's own thread.
pub struct P9Worker {
    gate: Gate,
    commands: Receiver<Command>,
    wake: EventFd,
}

/// A 9p device for `share`: the device for the transport and the worker
/// for the device manager to run. The server is made here, before any
/// seccomp filter (it opens /proc).
pub fn new(share: &Share) -> io::Result<(P9, P9Worker)> {
    let gate = Gate::new(&share.root, share.read_only, share.max_fids)?;
    let (tx, rx) = mpsc::channel();
    let wake = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?;
    let mut config = (share.tag.len() as u16).to_le_bytes().to_vec();
    config.extend_from_slice(share.tag.as_bytes());
    let dev = P9 {
        config,
        commands: tx,
        wake: wake.try_clone()?,
    };
    Ok((
        dev,
        P9Worker {
            gate,
            commands: rx,
            wake,
        },
    ))
}

impl VirtioDevice for P9 {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_9P
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1u64 << VIRTIO_9P_MOUNT_TAG
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|at| self.config.get(usize::try_from(at).ok()?))
                .copied()
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, mut queues: Vec<Queue>, _: u64, irq: Interrupt) -> Result<(), String> {
        let q = queues.pop().ok_or("no request queue")?;
        self.commands
            .send(Command::Activate(q, irq))
            .map_err(|_| "the share's worker thread has gone")?;
        let _ = self.wake.write(1);
        Ok(())
    }

    fn reset(&mut self) {
        let (done, answer) = mpsc::channel();
        if self.commands.send(Command::Reset(done)).is_ok() {
            let _ = self.wake.write(1);
            if answer.recv_timeout(RESET_WAIT).is_err() {
                log::warn!("virtio-9p: the worker did not stop within {RESET_WAIT:?} of a reset");
            }
        }
    }
}

impl P9Worker {
    /// Serves requests until `stop` is readable: `notify` is the queue's
    /// notification eventfd, `mem` guest memory.
    pub fn run(mut self, mem: GuestMemoryMmap, notify: EventFd, stop: EventFd) {
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
                log::error!("virtio-9p: poll failed: {}", io::Error::last_os_error());
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
                            self.gate.reset();
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
                if process_queue(q, &mem, &mut self.gate) {
                    irq.used_buffers();
                }
            }
        }
    }
}

/// Serves every request on `queue`; true if any was completed (the driver
/// then needs an interrupt).
pub fn process_queue(queue: &mut Queue, mem: &GuestMemoryMmap, gate: &mut Gate) -> bool {
    let mut used = false;
    // As in virtio-blk: at most the ring's worth of chains per call, each
    // bounded by the queue's size (virtio-queue checks heads and lengths).
    for _ in 0..queue.size() {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        let len = serve(chain, mem, gate);
        if queue.add_used(mem, head, len).is_err() {
            log::debug!("virtio-9p: cannot complete request {head}");
            break;
        }
        used = true;
    }
    used
}

/// Serves one chain; returns the bytes written into it.
fn serve(chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap, gate: &mut Gate) -> u32 {
    let (Ok(mut reader), Ok(mut writer)) =
        (Reader::new(mem, chain.clone()), Writer::new(mem, chain))
    else {
        // Part of the chain lies outside guest memory.
        return 0;
    };
    let room = writer.available_bytes();
    if room < wire::RLERROR_LEN {
        // Not even an error fits: nothing is done.
        return 0;
    }
    let reply = match read_request(&mut reader, gate.msize()) {
        Ok(msg) => gate.handle(&msg, room),
        Err(Some(reply)) => reply,
        Err(None) => return 0,
    };
    // The gate keeps replies within `room`.
    match writer.write_all(&reply) {
        Ok(()) => reply.len() as u32,
        Err(_) => 0,
    }
}

/// The request at the start of `reader`: its size field read first and
/// checked, then exactly that many bytes. Err(Some(reply)) answers a
/// message whose size lies, Err(None) one too short to have a tag.
fn read_request(reader: &mut Reader, msize: u32) -> Result<Vec<u8>, Option<Vec<u8>>> {
    let mut header = [0u8; wire::HEADER];
    if reader.available_bytes() < wire::HEADER || reader.read_exact(&mut header).is_err() {
        return Err(None);
    }
    let size = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let tag = u16::from_le_bytes([header[5], header[6]]);
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size > msize as usize {
        return Err(Some(wire::rlerror(tag, libc::EMSGSIZE)));
    }
    if size < wire::HEADER || size - wire::HEADER > reader.available_bytes() {
        return Err(Some(wire::rlerror(tag, libc::EINVAL)));
    }
    let mut msg = vec![0u8; size];
    msg[..wire::HEADER].copy_from_slice(&header);
    reader
        .read_exact(&mut msg[wire::HEADER..])
        .map_err(|_| Some(wire::rlerror(tag, libc::EINVAL)))?;
    Ok(msg)
}

#[cfg(test)]
mod tests;
