//! Fuzzes virtio-9p's request path: each input is a session of descriptor
//! chains (the request bytes, how they are split over descriptors, and the
//! room for the reply; the framing is [`parse`]'s), served by `p9::process_queue` through the gate
//! and the p9 server over a fresh temporary share beside a directory the
//! guest must never reach. Optionally a Tversion and a Tattach of fid 0
//! come first, so that mutations start from a mounted share.
//!
//! Invariants checked:
//! 1. Nothing panics or hangs, whatever the bytes (the gate checks every
//!    length before p9 decodes anything).
//! 2. A chain is completed with 0 bytes or with one whole R-message: its
//!    size field is the used length, at most the room the chain gave, its
//!    type is odd (a reply), and its tag is the request's.
//! 3. Confinement: the directory beside the share and the file in it are
//!    as they were (names, contents, mode), nothing appears beside the
//!    share, no Rread returns the outside file's contents, and no Rreaddir
//!    lists the outside directory's name.
//! 4. The guest never holds more fids than the share's limit.
//! 5. A read-only share is as it was: the same names, types, contents,
//!    modes and link targets.

#![no_main]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use kvmini::devices::virtio::p9::{self, confine::Gate};

const REQ_AT: u64 = 0x1_0000;
const REPLY_AT: u64 = 0x4_0000;
const MEM: usize = 0x10_0000;
const MAX_FIDS: usize = 16;
/// Unique to the outside directory and file: found in a reply only if
/// the guest reached them.
const OUTSIDE: &str = "outside-q7Zk2mX";
const SECRET: &[u8] = b"secret-contents-Vb8rT3nPq0Lw";

struct Chain<'a> {
    bytes: &'a [u8],
    /// Where the request is cut into a second and third descriptor, as
    /// fractions (/256) of its length.
    cuts: (u8, u8),
    /// The reply's room, and where it is cut in two (/256).
    room: u16,
    room_cut: u8,
}

/// The input: a flags byte (bit 0: mount first, bit 1: a read-only
/// share), then chains, each `len[2] room[2] cut[1] cut[1] room_cut[1]`
/// and `len` request bytes (fewer at the end of the input). A plain
/// framing, so that seeds are 9P sessions written by hand.
struct Input<'a> {
    mount: bool,
    read_only: bool,
    chains: Vec<Chain<'a>>,
}

fn parse(data: &[u8]) -> Option<Input<'_>> {
    let (&flags, mut rest) = data.split_first()?;
    let mut chains = Vec::new();
    while rest.len() >= 7 && chains.len() < 64 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let room = u16::from_le_bytes([rest[2], rest[3]]);
        let (cuts, room_cut) = ((rest[4], rest[5]), rest[6]);
        let body = &rest[7..];
        let n = len.min(body.len());
        chains.push(Chain {
            bytes: &body[..n],
            cuts,
            room,
            room_cut,
        });
        rest = &body[n..];
    }
    Some(Input {
        mount: flags & 1 != 0,
        read_only: flags & 2 != 0,
        chains,
    })
}

struct Dirs {
    base: PathBuf,
    share: PathBuf,
}

fn dirs() -> &'static Dirs {
    static DIRS: OnceLock<Dirs> = OnceLock::new();
    DIRS.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("kvmini-fuzz-p9-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join(OUTSIDE)).unwrap();
        std::fs::write(base.join(OUTSIDE).join("secret"), SECRET).unwrap();
        Dirs {
            share: base.join("share"),
            base,
        }
    })
}

/// The share as each run starts: files, a directory, and symlinks that
/// point out of it in every way.
fn fresh_share(d: &Dirs) {
    let s = &d.share;
    let _ = std::fs::remove_dir_all(s);
    std::fs::create_dir_all(s.join("sub/deeper")).unwrap();
    std::fs::write(s.join("file"), b"file contents\n").unwrap();
    std::fs::write(s.join("sub/inner"), b"inner\n").unwrap();
    let outside = d.base.join(OUTSIDE);
    for (target, name) in [
        (Path::new("/etc"), "etc"),
        (Path::new(".."), "up"),
        (Path::new("../.."), "upup"),
        (Path::new(&format!("../{OUTSIDE}/secret")), "rel_secret"),
        (outside.join("secret").as_path(), "abs_secret"),
        (outside.as_path(), "abs_outside"),
    ] {
        std::os::unix::fs::symlink(target, s.join(name)).unwrap();
    }
}

fn check_outside(d: &Dirs) {
    let mut top: Vec<String> = std::fs::read_dir(&d.base)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(
        top,
        [OUTSIDE, "share"],
        "something appeared beside the share"
    );
    let names: Vec<_> = std::fs::read_dir(d.base.join(OUTSIDE))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["secret"], "the outside directory changed");
    let secret = d.base.join(OUTSIDE).join("secret");
    assert_eq!(
        std::fs::read(&secret).unwrap(),
        SECRET,
        "the secret changed"
    );
    let mode = std::fs::symlink_metadata(&secret)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o644, "the secret's mode changed");
}

/// What a read-only share must keep: every entry's path, type, mode,
/// contents (files) or target (links), in order.
fn snapshot(dir: &Path, out: &mut Vec<(PathBuf, u32, Vec<u8>)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let what = if m.file_type().is_symlink() {
            std::fs::read_link(&p)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else if m.is_file() {
            std::fs::read(&p).unwrap()
        } else {
            Vec::new()
        };
        out.push((p.clone(), m.permissions().mode(), what));
        if m.is_dir() {
            snapshot(&p, out);
        }
    }
}

fn message(ty: u8, tag: u16, body: &[u8]) -> Vec<u8> {
    let mut m = ((7 + body.len()) as u32).to_le_bytes().to_vec();
    m.push(ty);
    m.extend_from_slice(&tag.to_le_bytes());
    m.extend_from_slice(body);
    m
}

fn mount_chains() -> Vec<(Vec<u8>, u16)> {
    let mut version = 65560u32.to_le_bytes().to_vec();
    version.extend_from_slice(&8u16.to_le_bytes());
    version.extend_from_slice(b"9P2000.L");
    let mut attach = vec![0, 0, 0, 0, 255, 255, 255, 255];
    attach.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
    vec![
        (message(100, 0xffff, &version), 0x1000),
        (message(104, 1, &attach), 0x1000),
    ]
}

/// Serves `c` as one chain; returns the reply (empty when none).
fn serve(mem: &GuestMemoryMmap, gate: &mut Gate, c: &Chain) -> Vec<u8> {
    let bytes = c.bytes;
    mem.write_slice(bytes, GuestAddress(REQ_AT)).unwrap();
    let len = bytes.len() as u32;
    let frac = |f: u8| len * u32::from(f) / 256;
    let mut cuts = [frac(c.cuts.0), frac(c.cuts.1)];
    cuts.sort();
    let mut descs = Vec::new();
    let mut at = 0;
    for end in cuts.into_iter().chain([len]) {
        if end > at {
            descs.push((REQ_AT + u64::from(at), end - at, 0u16));
            at = end;
        }
    }
    let room = u32::from(c.room);
    let cut = room * u32::from(c.room_cut) / 256;
    for (start, end) in [(0, cut), (cut, room)] {
        if end > start {
            descs.push((REPLY_AT + u64::from(start), end - start, 2));
        }
    }
    if descs.is_empty() {
        return Vec::new();
    }
    let mq = MockSplitQueue::create(mem, GuestAddress(0x8_0000), 16);
    let n = descs.len();
    let table: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, flags))| {
            let (flags, next) = if i + 1 < n {
                (flags | 1, i as u16 + 1)
            } else {
                (flags, 0)
            };
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
        })
        .collect();
    mq.build_desc_chain(&table).unwrap();
    let mut q: Queue = mq.create_queue().unwrap();
    assert!(p9::process_queue(&mut q, mem, gate));
    let used = mq.used().ring().ref_at(0).unwrap().load().len();
    assert!(used <= room, "{used} bytes used of {room}");
    let mut reply = vec![0u8; used as usize];
    mem.read_slice(&mut reply, GuestAddress(REPLY_AT)).unwrap();
    if used > 0 {
        assert!(used >= 7, "a reply of {used} bytes");
        assert_eq!(u32::from_le_bytes(reply[..4].try_into().unwrap()), used);
        assert_eq!(reply[4] % 2, 1, "an R-message");
        assert!(bytes.len() >= 7, "a reply to a request without a tag");
        assert_eq!(reply[5..7], bytes[5..7], "the reply's tag");
    }
    reply
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = parse(data) else { return };
    let d = dirs();
    fresh_share(d);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let root = d.share.canonicalize().unwrap();
    let mut gate = Gate::new(&root, input.read_only, MAX_FIDS).unwrap();
    let mut before = Vec::new();
    snapshot(&d.share, &mut before);
    let mounts = if input.mount {
        mount_chains()
    } else {
        Vec::new()
    };
    let first = mounts.iter().map(|(bytes, room)| Chain {
        bytes,
        cuts: (0, 0),
        room: *room,
        room_cut: 0,
    });
    for c in first.chain(input.chains) {
        let reply = serve(&mem, &mut gate, &c);
        match reply.get(4) {
            Some(117) => assert!(!contains(&reply, SECRET), "read the outside file"),
            Some(41) => assert!(
                !contains(&reply, OUTSIDE.as_bytes()),
                "listed the share's parent"
            ),
            _ => {}
        }
        assert!(gate.fid_count() <= MAX_FIDS);
    }
    check_outside(d);
    if input.read_only {
        let mut after = Vec::new();
        snapshot(&d.share, &mut after);
        assert!(before == after, "a read-only share changed");
    }
});
