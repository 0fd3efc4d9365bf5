//! virtio-9p with hand-built 9P2000.L messages on virtio-queue's mock
//! queues, over temporary shares: what a guest reads and writes, and every
//! way out of the share it might try.

use super::wire::{self, Fields, Qid};
use super::*;
use std::os::unix::fs::PermissionsExt;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const REQ_AT: u64 = 0x1_0000;
const REPLY_AT: u64 = 0x4_0000;
const ROOM: u32 = 0x2_0000;

const RDONLY: u32 = 0;
const WRONLY: u32 = 1;
const RDWR: u32 = 2;
const TRUNC: u32 = 0o1000;

const ROOT: u32 = 1;
const SECRET: &[u8] = b"the host's secret, outside the share\n";
const HELLO: &[u8] = b"hello, 9p\n";

/// A share (`base/share`) beside a directory it must never reach
/// (`base/outside`), guest memory, and the device's gate.
struct Fixture {
    base: PathBuf,
    share: PathBuf,
    mem: GuestMemoryMmap,
    gate: Gate,
    tag: u16,
}

fn base_dir(name: &str) -> PathBuf {
    let base = std::env::temp_dir().join(format!("kvmini-9p-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(base.join("share/sub")).unwrap();
    std::fs::create_dir_all(base.join("outside")).unwrap();
    std::fs::write(base.join("outside/secret"), SECRET).unwrap();
    let share = base.join("share");
    std::fs::write(share.join("hello.txt"), HELLO).unwrap();
    std::fs::write(share.join("sub/inner.txt"), b"inner\n").unwrap();
    let link = |target: &Path, name: &str| std::os::unix::fs::symlink(target, share.join(name));
    link(Path::new("/etc"), "to_etc").unwrap();
    link(Path::new("../.."), "up").unwrap();
    link(Path::new("../outside/secret"), "to_secret").unwrap();
    link(&base.join("outside/secret"), "abs_secret").unwrap();
    link(&base.join("outside"), "abs_outside").unwrap();
    base
}

impl Fixture {
    fn new(name: &str, read_only: bool) -> Self {
        Self::with_fids(name, read_only, MAX_FIDS)
    }

    fn with_fids(name: &str, read_only: bool, max_fids: usize) -> Self {
        let base = base_dir(name);
        let share = base.join("share");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let gate = Gate::new(&share.canonicalize().unwrap(), read_only, max_fids).unwrap();
        Fixture {
            base,
            share,
            mem,
            gate,
            tag: 0,
        }
    }

    /// Puts `descs` (addr, len, flags) on a fresh queue as one chain,
    /// serves it, and returns the used length.
    fn run_chain(&mut self, descs: &[(u64, u32, u16)]) -> u32 {
        let mq = MockSplitQueue::create(&self.mem, GuestAddress(0x8_0000), 16);
        let table: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let last = i + 1 == descs.len();
                let (flags, next) = if last {
                    (flags, 0)
                } else {
                    (flags | F_NEXT, i as u16 + 1)
                };
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
            })
            .collect();
        mq.build_desc_chain(&table).unwrap();
        let mut q: Queue = mq.create_queue().unwrap();
        assert!(process_queue(&mut q, &self.mem, &mut self.gate));
        assert_eq!(mq.used().idx().load(), 1);
        mq.used().ring().ref_at(0).unwrap().load().len()
    }

    /// Sends raw bytes as a request with `room` bytes for the reply;
    /// returns the reply.
    fn raw(&mut self, bytes: &[u8], room: u32) -> Vec<u8> {
        self.mem.write_slice(bytes, GuestAddress(REQ_AT)).unwrap();
        let len = self.run_chain(&[(REQ_AT, bytes.len() as u32, 0), (REPLY_AT, room, F_WRITE)]);
        let mut reply = vec![0u8; len as usize];
        self.mem
            .read_slice(&mut reply, GuestAddress(REPLY_AT))
            .unwrap();
        if len > 0 {
            let size = u32::from_le_bytes(reply[..4].try_into().unwrap());
            assert_eq!(size, len, "the used length is the reply's size");
        }
        reply
    }

    /// Sends a request of type `ty` with `body`; returns the reply,
    /// checked to answer the request's tag.
    fn rpc(&mut self, ty: u8, body: &[u8]) -> Vec<u8> {
        self.tag = self.tag.wrapping_add(1);
        let mut m = wire::start(ty, self.tag);
        m.extend_from_slice(body);
        let reply = self.raw(&wire::finish(m), ROOM);
        assert_eq!(tag_of(&reply), self.tag, "the reply's tag");
        reply
    }

    fn version(&mut self, msize: u32) -> Vec<u8> {
        let mut b = msize.to_le_bytes().to_vec();
        wire::put_str(&mut b, b"9P2000.L");
        self.rpc(wire::TVERSION, &b)
    }

    fn attach(&mut self, fid: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&fid.to_le_bytes());
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        wire::put_str(&mut b, b"user");
        wire::put_str(&mut b, b"");
        b.extend_from_slice(&1000u32.to_le_bytes());
        self.rpc(wire::TATTACH, &b)
    }

    /// Tversion and Tattach of fid ROOT; returns the root's qid.
    fn mount(&mut self) -> Qid {
        let r = self.version(8192);
        assert_eq!(r[4], wire::TVERSION + 1, "{r:?}");
        let r = self.attach(ROOT);
        wire::reply_qid(&r, wire::TATTACH + 1).expect("Rattach")
    }

    fn walk(&mut self, fid: u32, newfid: u32, names: &[&[u8]]) -> Vec<u8> {
        let m = wire::twalk(0, fid, newfid, names);
        self.rpc(wire::TWALK, &m[wire::HEADER..])
    }

    /// A walk that must reach its end; its qids.
    fn walk_ok(&mut self, fid: u32, newfid: u32, names: &[&[u8]]) -> Vec<Qid> {
        let r = self.walk(fid, newfid, names);
        let qids = wire::rwalk_qids(&r).unwrap_or_else(|| panic!("Rwalk, got {}", show(&r)));
        assert_eq!(qids.len(), names.len(), "walk {names:?}");
        qids
    }

    fn lopen(&mut self, fid: u32, flags: u32) -> Vec<u8> {
        self.rpc(
            wire::TLOPEN,
            &[fid.to_le_bytes(), flags.to_le_bytes()].concat(),
        )
    }

    fn read(&mut self, fid: u32, offset: u64, count: u32) -> Vec<u8> {
        let b = [
            &fid.to_le_bytes()[..],
            &offset.to_le_bytes(),
            &count.to_le_bytes(),
        ]
        .concat();
        self.rpc(wire::TREAD, &b)
    }

    fn write(&mut self, fid: u32, offset: u64, data: &[u8]) -> Vec<u8> {
        let b = [
            &fid.to_le_bytes()[..],
            &offset.to_le_bytes(),
            &(data.len() as u32).to_le_bytes(),
            data,
        ]
        .concat();
        self.rpc(wire::TWRITE, &b)
    }

    fn lcreate(&mut self, fid: u32, name: &[u8], flags: u32) -> Vec<u8> {
        let mut b = fid.to_le_bytes().to_vec();
        wire::put_str(&mut b, name);
        for v in [flags, 0o644, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        self.rpc(wire::TLCREATE, &b)
    }

    fn mkdir(&mut self, dfid: u32, name: &[u8]) -> Vec<u8> {
        let mut b = dfid.to_le_bytes().to_vec();
        wire::put_str(&mut b, name);
        b.extend_from_slice(&0o755u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        self.rpc(wire::TMKDIR, &b)
    }

    fn unlinkat(&mut self, dfid: u32, name: &[u8], flags: u32) -> Vec<u8> {
        let mut b = dfid.to_le_bytes().to_vec();
        wire::put_str(&mut b, name);
        b.extend_from_slice(&flags.to_le_bytes());
        self.rpc(wire::TUNLINKAT, &b)
    }

    fn renameat(&mut self, old: u32, oldname: &[u8], new: u32, newname: &[u8]) -> Vec<u8> {
        let mut b = old.to_le_bytes().to_vec();
        wire::put_str(&mut b, oldname);
        b.extend_from_slice(&new.to_le_bytes());
        wire::put_str(&mut b, newname);
        self.rpc(wire::TRENAMEAT, &b)
    }

    fn link(&mut self, dfid: u32, fid: u32, name: &[u8]) -> Vec<u8> {
        let mut b = [dfid.to_le_bytes(), fid.to_le_bytes()].concat();
        wire::put_str(&mut b, name);
        self.rpc(wire::TLINK, &b)
    }

    /// Tsetattr of the mode (valid 1) or the size (valid 8).
    fn setattr(&mut self, fid: u32, valid: u32, mode: u32, size: u64) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [fid, valid, mode, 0, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for v in [size, 0, 0, 0, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        self.rpc(wire::TSETATTR, &b)
    }

    fn getattr(&mut self, fid: u32) -> Vec<u8> {
        self.rpc(
            wire::TGETATTR,
            &[&fid.to_le_bytes()[..], &0x7ffu64.to_le_bytes()].concat(),
        )
    }

    fn readdir(&mut self, fid: u32) -> Vec<u8> {
        let b = [
            &fid.to_le_bytes()[..],
            &0u64.to_le_bytes(),
            &8000u32.to_le_bytes(),
        ]
        .concat();
        self.rpc(wire::TREADDIR, &b)
    }

    fn clunk(&mut self, fid: u32) -> Vec<u8> {
        self.rpc(wire::TCLUNK, &fid.to_le_bytes())
    }

    /// Walks `names` from the root to `fid`, opens it read-only and
    /// returns all it reads.
    fn cat(&mut self, fid: u32, names: &[&[u8]]) -> Vec<u8> {
        self.walk_ok(ROOT, fid, names);
        ok(&self.lopen(fid, RDONLY), wire::TLOPEN);
        let data = rread(&self.read(fid, 0, 4096));
        ok(&self.clunk(fid), wire::TCLUNK);
        data
    }

    /// The names a directory fid lists.
    fn list(&mut self, fid: u32) -> Vec<(String, Qid)> {
        ok(&self.lopen(fid, RDONLY), wire::TLOPEN);
        entries(&self.readdir(fid))
    }

    /// The outside directory is as the fixture made it.
    fn assert_outside_untouched(&self) {
        let mut names: Vec<_> = std::fs::read_dir(self.base.join("outside"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["secret"], "the outside directory changed");
        assert_eq!(
            std::fs::read(self.base.join("outside/secret")).unwrap(),
            SECRET
        );
        let mode = std::fs::metadata(self.base.join("outside/secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "the secret's mode changed");
        let top: Vec<_> = std::fs::read_dir(&self.base)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(top.len(), 2, "something appeared beside the share: {top:?}");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// The process's umask (read by setting it and putting it back).
fn umask() -> u32 {
    // SAFETY: umask only swaps the process's file mode mask.
    unsafe {
        let m = libc::umask(0o022);
        libc::umask(m);
        m
    }
}

fn tag_of(r: &[u8]) -> u16 {
    u16::from_le_bytes([r[5], r[6]])
}

fn show(r: &[u8]) -> String {
    match errno_of(r) {
        Some(e) => format!("Rlerror {}", io::Error::from_raw_os_error(e)),
        None => format!("{r:?}"),
    }
}

fn errno_of(r: &[u8]) -> Option<i32> {
    (r.get(4) == Some(&wire::RLERROR))
        .then(|| u32::from_le_bytes(r[7..11].try_into().unwrap()) as i32)
}

/// Asserts the reply is Rlerror with `errno`.
#[track_caller]
fn err(r: &[u8], errno: i32) {
    assert_eq!(
        errno_of(r),
        Some(errno),
        "want {}, got {}",
        io::Error::from_raw_os_error(errno),
        show(r)
    );
}

/// Asserts the reply answers a request of type `ty`.
#[track_caller]
fn ok(r: &[u8], ty: u8) {
    assert_eq!(r.get(4), Some(&(ty + 1)), "want R{ty}, got {}", show(r));
}

fn rread(r: &[u8]) -> Vec<u8> {
    ok(r, wire::TREAD);
    let n = u32::from_le_bytes(r[7..11].try_into().unwrap()) as usize;
    r[11..11 + n].to_vec()
}

fn entries(r: &[u8]) -> Vec<(String, Qid)> {
    ok(r, wire::TREADDIR);
    let mut f = Fields::new(&r[11..]);
    let mut out = Vec::new();
    while let (Some(q), Some(_), Some(_), Some(name)) = (f.bytes(13), f.u64(), f.u8(), f.str()) {
        out.push((
            String::from_utf8(name.to_vec()).unwrap(),
            Qid::parse(q).unwrap(),
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn names(list: &[(String, Qid)]) -> Vec<&str> {
    list.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn the_guest_reads_a_file_and_lists_a_directory() {
    let mut f = Fixture::new("read", false);
    f.mount();
    assert_eq!(f.cat(2, &[b"hello.txt"]), HELLO);
    assert_eq!(f.cat(2, &[b"sub", b"inner.txt"]), b"inner\n");
    // An offset past the end reads nothing; a small count reads that much.
    f.walk_ok(ROOT, 3, &[b"hello.txt"]);
    ok(&f.lopen(3, RDONLY), wire::TLOPEN);
    assert_eq!(rread(&f.read(3, 100, 10)), b"");
    assert_eq!(rread(&f.read(3, 2, 3)), b"llo");
    let r = f.getattr(3);
    ok(&r, wire::TGETATTR);
    let size = u64::from_le_bytes(r[7 + 8 + 13 + 4 + 4 + 4 + 8 + 8..][..8].try_into().unwrap());
    assert_eq!(size, HELLO.len() as u64);
    f.walk_ok(ROOT, 4, &[]);
    let list = f.list(4);
    assert_eq!(
        names(&list),
        [
            ".",
            "..",
            "abs_outside",
            "abs_secret",
            "hello.txt",
            "sub",
            "to_etc",
            "to_secret",
            "up"
        ]
    );
    // Statfs, fsync and flush are answered.
    ok(&f.rpc(wire::TSTATFS, &ROOT.to_le_bytes()), wire::TSTATFS);
    ok(
        &f.rpc(
            wire::TFSYNC,
            &[3u32.to_le_bytes(), 0u32.to_le_bytes()].concat(),
        ),
        wire::TFSYNC,
    );
    ok(&f.rpc(wire::TFLUSH, &7u16.to_le_bytes()), wire::TFLUSH);
}

#[test]
fn the_guests_writes_reach_the_host_byte_for_byte() {
    let mut f = Fixture::new("write", false);
    f.mount();
    f.walk_ok(ROOT, 2, &[]);
    ok(&f.lcreate(2, b"new.bin", RDWR), wire::TLCREATE);
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let mut at = 0;
    for chunk in data.chunks(6000) {
        let r = f.write(2, at, chunk);
        ok(&r, wire::TWRITE);
        assert_eq!(
            u32::from_le_bytes(r[7..11].try_into().unwrap()),
            chunk.len() as u32
        );
        at += chunk.len() as u64;
    }
    ok(&f.clunk(2), wire::TCLUNK);
    assert_eq!(std::fs::read(f.share.join("new.bin")).unwrap(), data);
    // Over an existing file, truncated first.
    f.walk_ok(ROOT, 3, &[b"hello.txt"]);
    ok(&f.lopen(3, WRONLY | TRUNC), wire::TLOPEN);
    ok(&f.write(3, 0, b"bye\n"), wire::TWRITE);
    assert_eq!(std::fs::read(f.share.join("hello.txt")).unwrap(), b"bye\n");
    // A directory made, a file renamed into it, then removed.
    ok(&f.mkdir(ROOT, b"d"), wire::TMKDIR);
    f.walk_ok(ROOT, 4, &[b"d"]);
    ok(
        &f.renameat(ROOT, b"new.bin", 4, b"moved.bin"),
        wire::TRENAMEAT,
    );
    assert_eq!(std::fs::read(f.share.join("d/moved.bin")).unwrap(), data);
    ok(&f.unlinkat(4, b"moved.bin", 0), wire::TUNLINKAT);
    ok(
        &f.unlinkat(ROOT, b"d", libc::AT_REMOVEDIR as u32),
        wire::TUNLINKAT,
    );
    assert!(!f.share.join("d").exists());
    // A hard link, a truncation and a mode change.
    ok(&f.link(ROOT, 3, b"hello2.txt"), wire::TLINK);
    assert_eq!(std::fs::read(f.share.join("hello2.txt")).unwrap(), b"bye\n");
    ok(&f.setattr(3, 8, 0, 2), wire::TSETATTR);
    assert_eq!(std::fs::read(f.share.join("hello.txt")).unwrap(), b"by");
    ok(&f.setattr(3, 1, 0o600, 0), wire::TSETATTR);
    let mode = std::fs::metadata(f.share.join("hello.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // No set-user-ID or set-group-ID file comes from the guest.
    f.walk_ok(ROOT, 7, &[]);
    let mut b = 7u32.to_le_bytes().to_vec();
    wire::put_str(&mut b, b"suid");
    for v in [RDWR, 0o6755, 0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    ok(&f.rpc(wire::TLCREATE, &b), wire::TLCREATE);
    let share = f.share.clone();
    let mode = |p: &str| {
        std::fs::metadata(share.join(p))
            .unwrap()
            .permissions()
            .mode()
    };
    assert_eq!(mode("suid") & 0o7777, 0o755 & !umask());
    ok(&f.setattr(3, 1, 0o4755, 0), wire::TSETATTR);
    assert_eq!(mode("hello.txt") & 0o7777, 0o755);
    ok(&f.setattr(3, 1, 0o2755, 0), wire::TSETATTR);
    assert_eq!(mode("hello.txt") & 0o7777, 0o755);
    f.walk_ok(ROOT, 6, &[b"sub"]);
    ok(&f.setattr(6, 1, 0o6775, 0), wire::TSETATTR);
    assert_eq!(
        mode("sub") & 0o7777,
        0o2775,
        "a directory keeps set-group-ID"
    );
    // Host errors reach the guest as their errno.
    err(&f.mkdir(ROOT, b"sub"), libc::EEXIST);
    err(&f.walk(ROOT, 5, &[b"nonesuch"]), libc::ENOENT);
    err(
        &f.unlinkat(ROOT, b"sub", libc::AT_REMOVEDIR as u32),
        libc::ENOTEMPTY,
    );
    f.assert_outside_untouched();
}

#[test]
fn dotdot_at_the_root_stays_at_the_root() {
    let mut f = Fixture::new("dotdot", false);
    let root = f.mount();
    let qids = f.walk_ok(ROOT, 2, &[b".."]);
    assert_eq!(qids[0].path, root.path, "`..` of the root is the root");
    assert_eq!(f.list(2).len(), 9, "fid 2 lists the share's root");
    let qids = f.walk_ok(ROOT, 3, &[b"..", b"..", b"..", b"hello.txt"]);
    assert_eq!(
        qids[..3].iter().map(|q| q.path).collect::<Vec<_>>(),
        [root.path; 3]
    );
    ok(&f.clunk(3), wire::TCLUNK);
    assert_eq!(f.cat(3, &[b"..", b"..", b"hello.txt"]), HELLO);
    // From below the root: `..` goes up, and stops at the root.
    let sub = f.walk_ok(ROOT, 4, &[b"sub"])[0];
    let qids = f.walk_ok(4, 5, &[b"..", b"sub", b"..", b"..", b".."]);
    let paths: Vec<u64> = qids.iter().map(|q| q.path).collect();
    assert_eq!(
        paths,
        [root.path, sub.path, root.path, root.path, root.path]
    );
    assert!(names(&f.list(5)).contains(&"hello.txt"));
    // A fid walked onto itself with `..`.
    f.walk_ok(4, 4, &[b"..", b".."]);
    assert!(names(&f.list(4)).contains(&"hello.txt"));
    // The outside is not found, however many `..` come first.
    let r = f.walk(ROOT, 6, &[b"..", b"outside"]);
    assert_eq!(
        wire::rwalk_qids(&r).map(|q| q.len()),
        Some(1),
        "stops at `outside`"
    );
    err(&f.walk(ROOT, 6, &[b"outside"]), libc::ENOENT);
    let r = f.walk(ROOT, 6, &[b"..", b"..", b"outside", b"secret"]);
    assert_eq!(
        wire::rwalk_qids(&r).map(|q| q.len()),
        Some(2),
        "stops at `outside`"
    );
    err(&f.walk(6, 7, &[]), libc::EBADF);
    // The root's `..` entry reports the root itself.
    let list = f.list(2);
    let dotdot = list.iter().find(|(n, _)| n == "..").unwrap().1;
    assert_eq!(dotdot, root);
    assert_eq!(f.gate.fid_count(), 4);
    assert!(
        !f.gate.server_has_fid(confine::INTERNAL_FID),
        "the internal fid is gone"
    );
    assert!(f.gate.server_has_fid(4) && !f.gate.server_has_fid(6));
    f.assert_outside_untouched();
}

/// The reason for the gate: p9 alone walks `..` out of its root, and the
/// root's readdir stats its parent.
#[test]
fn p9_alone_walks_above_its_root() {
    let base = base_dir("bare");
    let root = base.join("share").canonicalize().unwrap();
    let mut server =
        p9::Server::new(root.as_path(), Default::default(), Default::default()).unwrap();
    let mut call = |m: Vec<u8>| {
        let mut out = Vec::new();
        server
            .handle_message(&mut std::io::Cursor::new(m), &mut out)
            .unwrap();
        out
    };
    call(wire::tversion(0, 8192, b"9P2000.L"));
    let mut a = wire::start(wire::TATTACH, 0);
    a.extend_from_slice(&[1, 0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 0, 0, 0, 0, 0]);
    let rootqid = wire::reply_qid(&call(wire::finish(a)), wire::TATTACH + 1).unwrap();
    let r = call(wire::twalk(0, 1, 2, &[b"..", b"outside", b"secret"]));
    let qids = wire::rwalk_qids(&r).unwrap();
    assert_eq!(qids.len(), 3, "p9 reaches outside/secret by itself");
    assert_ne!(qids[0].path, rootqid.path);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn symlinks_are_never_followed() {
    let mut f = Fixture::new("symlinks", false);
    f.mount();
    let mut fid = 10;
    for link in [
        &b"to_etc"[..],
        b"up",
        b"to_secret",
        b"abs_secret",
        b"abs_outside",
    ] {
        fid += 1;
        let q = f.walk_ok(ROOT, fid, &[link])[0];
        assert_ne!(
            q.ty & wire::QTSYMLINK,
            0,
            "{link:?} walks to the link itself"
        );
        err(&f.lopen(fid, RDONLY), libc::ELOOP);
        err(&f.lopen(fid, RDWR), libc::ELOOP);
        err(&f.setattr(fid, 1, 0o777, 0), libc::ELOOP);
        err(&f.setattr(fid, 8, 0, 0), libc::ELOOP);
        err(&f.link(ROOT, fid, b"hardlink"), libc::ELOOP);
        // Nothing can be walked or made through it.
        err(&f.walk(fid, 99, &[b"passwd"]), libc::ENOTDIR);
        err(&f.walk(fid, 99, &[b".."]), libc::ENOTDIR);
        // A walk through it stops at the link (one qid, no new fid).
        let r = f.walk(ROOT, 99, &[link, b"secret"]);
        assert_eq!(
            wire::rwalk_qids(&r).map(|q| q.len()),
            Some(1),
            "{}",
            show(&r)
        );
        err(&f.walk(99, 98, &[]), libc::EBADF);
        err(&f.lcreate(fid, b"x", RDWR), libc::ENOTDIR);
        err(&f.mkdir(fid, b"x"), libc::ENOTDIR);
        err(&f.renameat(ROOT, b"hello.txt", fid, b"x"), libc::ENOTDIR);
        // Reading it as a link gives its text, and getattr the link's own.
        let r = f.rpc(wire::TREADLINK, &fid.to_le_bytes());
        ok(&r, wire::TREADLINK);
        let r = f.getattr(fid);
        ok(&r, wire::TGETATTR);
        let mode = u32::from_le_bytes(r[7 + 8 + 13..][..4].try_into().unwrap());
        assert_eq!(mode & libc::S_IFMT, libc::S_IFLNK);
    }
    let r = f.rpc(wire::TREADLINK, &11u32.to_le_bytes());
    assert_eq!(&r[9..], b"/etc");
    // Renaming the link itself is fine: it stays a link inside the share.
    ok(
        &f.renameat(ROOT, b"to_secret", ROOT, b"renamed"),
        wire::TRENAMEAT,
    );
    // The guest cannot make links or nodes of its own (p9 refuses).
    let mut b = ROOT.to_le_bytes().to_vec();
    wire::put_str(&mut b, b"mine");
    wire::put_str(&mut b, b"/etc/passwd");
    b.extend_from_slice(&0u32.to_le_bytes());
    err(&f.rpc(wire::TSYMLINK, &b), libc::EACCES);
    assert!(!f.share.join("mine").exists());
    f.assert_outside_untouched();
}

#[test]
fn names_that_are_paths_are_refused() {
    let mut f = Fixture::new("names", false);
    f.mount();
    let outside = f.base.join("outside/x");
    let abs = outside.to_str().unwrap().as_bytes().to_vec();
    for name in [
        &b"../outside"[..],
        b"sub/inner.txt",
        b"/etc",
        b"/",
        b"",
        b"a\0b",
        b"..\0",
        b"\xff\xfe",
        &abs,
    ] {
        err(&f.walk(ROOT, 2, &[name]), libc::EINVAL);
        err(&f.walk(ROOT, 2, &[b"sub", name]), libc::EINVAL);
        err(&f.lcreate(ROOT, name, RDWR), libc::EINVAL);
        err(&f.mkdir(ROOT, name), libc::EINVAL);
        err(&f.unlinkat(ROOT, name, 0), libc::EINVAL);
        err(&f.renameat(ROOT, b"hello.txt", ROOT, name), libc::EINVAL);
        err(&f.renameat(ROOT, name, ROOT, b"y"), libc::EINVAL);
    }
    // `.` and `..` name nothing that can be made, moved or removed.
    f.walk_ok(ROOT, 3, &[b"hello.txt"]);
    for name in [&b"."[..], b".."] {
        err(&f.lcreate(ROOT, name, RDWR), libc::EINVAL);
        err(&f.mkdir(ROOT, name), libc::EINVAL);
        err(
            &f.unlinkat(ROOT, name, libc::AT_REMOVEDIR as u32),
            libc::EINVAL,
        );
        err(&f.renameat(ROOT, b"hello.txt", ROOT, name), libc::EINVAL);
        err(&f.renameat(ROOT, name, ROOT, b"y"), libc::EINVAL);
        err(&f.link(ROOT, 3, name), libc::EINVAL);
    }
    assert_eq!(std::fs::read(f.share.join("hello.txt")).unwrap(), HELLO);
    f.assert_outside_untouched();
}

#[test]
fn renames_and_links_out_of_the_share_are_refused() {
    let mut f = Fixture::new("out", false);
    f.mount();
    f.walk_ok(ROOT, 2, &[b"hello.txt"]);
    f.walk_ok(ROOT, 3, &[b".."]);
    for name in [&b"../outside/h"[..], b"../h", b"../../tmp/h"] {
        err(&f.renameat(ROOT, b"hello.txt", ROOT, name), libc::EINVAL);
        err(&f.renameat(3, b"hello.txt", 3, name), libc::EINVAL);
        err(&f.link(ROOT, 2, name), libc::EINVAL);
        err(&f.link(3, 2, name), libc::EINVAL);
    }
    // 9P2000's Trename: p9 does not support it.
    let mut b = [2u32.to_le_bytes(), ROOT.to_le_bytes()].concat();
    wire::put_str(&mut b, b"h");
    err(&f.rpc(wire::TRENAME, &b), libc::EOPNOTSUPP);
    // Within the share, both work.
    ok(
        &f.renameat(3, b"hello.txt", ROOT, b"h.txt"),
        wire::TRENAMEAT,
    );
    ok(&f.link(3, 2, b"h2.txt"), wire::TLINK);
    assert_eq!(std::fs::read(f.share.join("h2.txt")).unwrap(), HELLO);
    f.assert_outside_untouched();
}

#[test]
fn a_read_only_share_refuses_every_change() {
    let mut f = Fixture::new("ro", true);
    f.mount();
    f.walk_ok(ROOT, 2, &[b"hello.txt"]);
    f.walk_ok(ROOT, 3, &[b"sub"]);
    err(&f.lcreate(ROOT, b"new", RDWR), libc::EROFS);
    err(&f.lcreate(ROOT, b"new", RDONLY), libc::EROFS);
    err(&f.mkdir(ROOT, b"d"), libc::EROFS);
    err(&f.unlinkat(ROOT, b"hello.txt", 0), libc::EROFS);
    err(&f.unlinkat(3, b"inner.txt", 0), libc::EROFS);
    err(&f.renameat(ROOT, b"hello.txt", 3, b"h"), libc::EROFS);
    err(&f.setattr(2, 1, 0o777, 0), libc::EROFS);
    err(&f.setattr(2, 8, 0, 0), libc::EROFS);
    err(&f.setattr(2, 0, 0, 0), libc::EROFS);
    err(&f.link(ROOT, 2, b"h2"), libc::EROFS);
    err(&f.rpc(wire::TREMOVE, &2u32.to_le_bytes()), libc::EROFS);
    let mut b = ROOT.to_le_bytes().to_vec();
    wire::put_str(&mut b, b"s");
    wire::put_str(&mut b, b"t");
    b.extend_from_slice(&0u32.to_le_bytes());
    err(&f.rpc(wire::TSYMLINK, &b), libc::EROFS);
    let mut b = ROOT.to_le_bytes().to_vec();
    wire::put_str(&mut b, b"user.x");
    b.extend_from_slice(&[0; 12]);
    err(&f.rpc(wire::TXATTRCREATE, &b), libc::EROFS);
    for flags in [WRONLY, RDWR, 3, RDONLY | TRUNC, RDONLY | 0o100] {
        err(&f.lopen(2, flags), libc::EROFS);
    }
    // Reading works; a write through a read-only open is refused too.
    ok(&f.lopen(2, RDONLY), wire::TLOPEN);
    assert_eq!(rread(&f.read(2, 0, 100)), HELLO);
    err(&f.write(2, 0, b"x"), libc::EROFS);
    assert_eq!(names(&f.list(3)), [".", "..", "inner.txt"]);
    assert_eq!(std::fs::read(f.share.join("hello.txt")).unwrap(), HELLO);
    let mut all: Vec<_> = std::fs::read_dir(&f.share).unwrap().collect();
    all.retain(|e| e.is_ok());
    assert_eq!(all.len(), 7, "nothing made or removed");
}

#[test]
fn malformed_messages_get_error_replies() {
    let mut f = Fixture::new("malformed", false);
    f.mount();
    // Too short to have a tag: completed with nothing written.
    assert_eq!(f.raw(&[1, 2, 3], ROOM), b"");
    assert_eq!(f.raw(&[], ROOM).len(), 0);
    // A size field below the header, beyond the chain, above the
    // negotiated size.
    err(&f.raw(&[3, 0, 0, 0, 100, 9, 0], ROOM), libc::EINVAL);
    err(
        &f.raw(&[200, 0, 0, 0, 120, 9, 0, 1, 0, 0, 0], ROOM),
        libc::EINVAL,
    );
    err(
        &f.raw(&[0xff, 0xff, 0xff, 0xff, 120, 9, 0], ROOM),
        libc::EMSGSIZE,
    );
    err(&f.raw(&[0, 0x30, 0, 0, 120, 9, 0], ROOM), libc::EMSGSIZE);
    // Bodies that end early or run on, lengths that lie.
    err(&f.rpc(wire::TCLUNK, &[1, 0]), libc::EINVAL);
    err(&f.rpc(wire::TCLUNK, &[1, 0, 0, 0, 0]), libc::EINVAL);
    err(
        &f.rpc(
            wire::TWRITE,
            &[
                &[1u8, 0, 0, 0][..],
                &[0; 8],
                &u32::MAX.to_le_bytes(),
                b"abc",
            ]
            .concat(),
        ),
        libc::EINVAL,
    );
    err(
        &f.rpc(
            wire::TWRITE,
            &[&[1u8, 0, 0, 0][..], &[0; 8], &2u32.to_le_bytes(), b"abc"].concat(),
        ),
        libc::EINVAL,
    );
    let mut b = ROOT.to_le_bytes().to_vec();
    b.extend_from_slice(&500u16.to_le_bytes());
    b.extend_from_slice(b"short");
    err(&f.rpc(wire::TMKDIR, &b), libc::EINVAL);
    let mut w = [ROOT.to_le_bytes(), 2u32.to_le_bytes()].concat();
    w.extend_from_slice(&u16::MAX.to_le_bytes());
    err(&f.rpc(wire::TWALK, &w), libc::EINVAL);
    // More than 16 names in a walk.
    let many: Vec<&[u8]> = vec![b"."; 17];
    err(&f.walk(ROOT, 2, &many), libc::EINVAL);
    f.walk_ok(ROOT, 2, &many[..16]);
    // Unknown types, 9P2000's own, and replies sent as requests.
    for ty in [0u8, 6, 7, 101, 106, 112, 114, 124, 126, 200, 255] {
        err(&f.rpc(ty, &[0; 16]), libc::EOPNOTSUPP);
    }
    // A huge read count is cut to the reply buffer.
    f.walk_ok(ROOT, 3, &[b"hello.txt"]);
    ok(&f.lopen(3, RDONLY), wire::TLOPEN);
    assert_eq!(rread(&f.read(3, 0, u32::MAX)), HELLO);
    let mut m = wire::start(wire::TREAD, 9);
    m.extend_from_slice(&[&3u32.to_le_bytes()[..], &[0; 8], &u32::MAX.to_le_bytes()].concat());
    let r = f.raw(&wire::finish(m), 14);
    assert_eq!(rread(&r), &HELLO[..3]);
    // A reply that does not fit what the guest gave: EMSGSIZE.
    let mut m = wire::start(wire::TGETATTR, 9);
    m.extend_from_slice(&[&3u32.to_le_bytes()[..], &[0xff; 8]].concat());
    err(&f.raw(&wire::finish(m.clone()), 11), libc::EMSGSIZE);
    // No room even for an error, or buffers outside guest memory: nothing.
    assert_eq!(f.raw(&wire::finish(m.clone()), 10), b"");
    f.mem
        .write_slice(&wire::finish(m.clone()), GuestAddress(REQ_AT))
        .unwrap();
    assert_eq!(f.run_chain(&[(REQ_AT, 19, 0), (0xf_fff0, 200, F_WRITE)]), 0);
    assert_eq!(f.run_chain(&[(REQ_AT, 19, 0)]), 0);
    // A request spread over several descriptors is read whole.
    let m = wire::finish(m);
    f.mem.write_slice(&m[..5], GuestAddress(REQ_AT)).unwrap();
    f.mem
        .write_slice(&m[5..], GuestAddress(REQ_AT + 0x100))
        .unwrap();
    let len = f.run_chain(&[
        (REQ_AT, 5, 0),
        (REQ_AT + 0x100, 14, 0),
        (REPLY_AT, 4, F_WRITE),
        (REPLY_AT + 4, 400, F_WRITE),
    ]);
    assert_eq!(len, 160, "an Rgetattr");
    // Fids that were never made.
    err(&f.lopen(77, RDONLY), libc::EBADF);
    err(&f.walk(77, 78, &[]), libc::EBADF);
    err(&f.read(77, 0, 1), libc::EBADF);
    err(&f.clunk(77), libc::EBADF);
    // The server still works.
    assert_eq!(f.cat(4, &[b"hello.txt"]), HELLO);
}

#[test]
fn fids_are_bounded_and_reused() {
    let mut f = Fixture::with_fids("fids", false, 8);
    f.mount();
    for fid in 2..=8 {
        f.walk_ok(ROOT, fid, &[b"hello.txt"]);
    }
    assert_eq!(f.gate.fid_count(), 8);
    err(&f.walk(ROOT, 9, &[b"hello.txt"]), libc::EMFILE);
    err(&f.walk(ROOT, 9, &[b".."]), libc::EMFILE);
    err(&f.attach(9), libc::EMFILE);
    // Walking a fid onto itself makes none.
    f.walk_ok(2, 2, &[]);
    f.walk_ok(ROOT, ROOT, &[b"sub", b".."]);
    ok(&f.clunk(8), wire::TCLUNK);
    f.walk_ok(ROOT, 9, &[b"sub"]);
    err(&f.walk(ROOT, 10, &[]), libc::EMFILE);
    // The fid in use, and the gate's own, cannot be made again.
    ok(&f.clunk(7), wire::TCLUNK);
    err(&f.walk(ROOT, 9, &[]), libc::EBADF);
    err(&f.walk(ROOT, confine::INTERNAL_FID, &[]), libc::EBADF);
    err(&f.attach(confine::INTERNAL_FID), libc::EBADF);
    err(&f.lopen(confine::INTERNAL_FID, RDONLY), libc::EBADF);
    // Tversion and a reset drop them all.
    f.version(8192);
    assert_eq!(f.gate.fid_count(), 0);
    err(&f.walk(ROOT, 2, &[]), libc::EBADF);
    f.attach(ROOT);
    f.walk_ok(ROOT, 2, &[]);
    f.gate.reset();
    assert_eq!(f.gate.fid_count(), 0);
    err(&f.walk(ROOT, 2, &[]), libc::EBADF);
}

#[test]
fn thousands_of_fids_stay_within_the_limit() {
    let mut f = Fixture::with_fids("many", false, 2000);
    f.mount();
    let mut refused = 0;
    for fid in 2..2600 {
        let r = f.walk(ROOT, fid, &[b"hello.txt"]);
        if errno_of(&r).is_some() {
            err(&r, libc::EMFILE);
            refused += 1;
        } else {
            ok(&f.lopen(fid, RDONLY), wire::TLOPEN);
        }
    }
    assert_eq!(refused, 2600 - 2000 - 1);
    assert_eq!(f.gate.fid_count(), 2000);
}

#[test]
fn a_fifo_in_the_share_does_not_block_the_worker() {
    let mut f = Fixture::new("fifo", false);
    let path = std::ffi::CString::new(f.share.join("fifo").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    f.mount();
    f.walk_ok(ROOT, 2, &[b"fifo"]);
    // Without a writer this open would block forever. (p9 reads at an
    // offset, which a FIFO refuses.)
    ok(&f.lopen(2, RDONLY), wire::TLOPEN);
    err(&f.read(2, 0, 10), libc::ESPIPE);
}

#[test]
fn the_config_space_has_the_tag() {
    let base = base_dir("config");
    let share = Share::open(&base.join("share"), "hostdir", false).unwrap();
    let (dev, _) = new(&share).unwrap();
    assert_eq!(dev.device_type(), 9);
    assert_eq!(dev.features(), 1);
    assert_eq!(dev.queue_max_sizes(), [QUEUE_SIZE]);
    let mut c = [0xffu8; 12];
    dev.read_config(0, &mut c);
    assert_eq!(&c, b"\x07\0hostdir\0\0\0");
    let mut b = [0u8; 2];
    dev.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0, 0]);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn shares_are_checked_when_opened() {
    let base = base_dir("open");
    let share = base.join("share");
    let s = Share::open(&share.join("sub/.."), "t", true).unwrap();
    assert_eq!(s.root, share.canonicalize().unwrap());
    assert!(s.read_only);
    // Through a symlink: the link is resolved once, here.
    std::os::unix::fs::symlink(&share, base.join("link")).unwrap();
    assert_eq!(
        Share::open(&base.join("link"), "t", false).unwrap().root,
        s.root
    );
    let e = Share::open(&base.join("missing"), "t", false).unwrap_err();
    assert!(matches!(e, Error::Open(..)), "{e}");
    let e = Share::open(&share.join("hello.txt"), "t", false).unwrap_err();
    assert!(matches!(e, Error::NotDirectory(..)), "{e}");
    for bad in ["", "a b", "a,b", &"x".repeat(32), "tag\u{e9}"] {
        assert!(check_tag(bad).is_err(), "{bad:?}");
        assert!(matches!(
            Share::open(&share, bad, false),
            Err(Error::Tag(..))
        ));
    }
    assert!(check_tag(&"x".repeat(31)).is_ok());
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn the_descriptor_limit_bounds_the_fids() {
    let mut shares = vec![
        Share {
            root: "/".into(),
            tag: "a".into(),
            read_only: false,
            max_fids: MAX_FIDS,
        };
        3
    ];
    fit_descriptor_limit(&mut shares);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit into a valid struct.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    let total: u64 = shares.iter().map(|s| s.max_fids as u64 * 2).sum();
    assert!(
        total + RESERVED_FDS <= lim.rlim_cur || shares[0].max_fids == MIN_FIDS,
        "{total} descriptors for fids under a limit of {}",
        lim.rlim_cur
    );
    assert!(shares
        .iter()
        .all(|s| s.max_fids <= MAX_FIDS && s.max_fids >= MIN_FIDS));
}

/// Every system call a session makes is one the 9p worker's seccomp
/// filter allows: the session runs in a forked child under the filter,
/// and a call outside it would kill the child with SIGSYS.
#[test]
fn a_session_under_the_workers_seccomp_filter() {
    let mut f = Fixture::new("seccomp", false);
    let filter = crate::seccomp::filter(crate::seccomp::ThreadKind::P9Worker);
    crate::seccomp::prepare_allocator();
    // SAFETY: the child runs the session and leaves with _exit; glibc
    // makes malloc usable after fork, and the child touches no lock held
    // by another thread of the test process but the allocator's.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        if crate::seccomp::install(filter).is_err() {
            // SAFETY: leaving the child at once.
            unsafe { libc::_exit(3) };
        }
        let fine =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| session(&mut f))).is_ok();
        // SAFETY: leaving the child without running destructors.
        unsafe { libc::_exit(if fine { 0 } else { 4 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        !libc::WIFSIGNALED(status),
        "killed by signal {}",
        libc::WTERMSIG(status)
    );
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "the session failed in the child"
    );
}

/// One of each request that touches the host, as a Linux guest makes them.
fn session(f: &mut Fixture) {
    f.mount();
    assert_eq!(f.cat(2, &[b"hello.txt"]), HELLO);
    f.walk_ok(ROOT, 3, &[b"sub"]);
    assert_eq!(names(&f.list(3)), [".", "..", "inner.txt"]);
    ok(&f.getattr(3), wire::TGETATTR);
    ok(&f.rpc(wire::TSTATFS, &ROOT.to_le_bytes()), wire::TSTATFS);
    f.walk_ok(ROOT, 4, &[b"to_etc"]);
    ok(
        &f.rpc(wire::TREADLINK, &4u32.to_le_bytes()),
        wire::TREADLINK,
    );
    f.walk_ok(ROOT, 5, &[]);
    ok(&f.lcreate(5, b"new", RDWR), wire::TLCREATE);
    ok(&f.write(5, 0, b"data"), wire::TWRITE);
    ok(
        &f.rpc(
            wire::TFSYNC,
            &[5u32.to_le_bytes(), 0u32.to_le_bytes()].concat(),
        ),
        wire::TFSYNC,
    );
    ok(
        &f.rpc(
            wire::TFSYNC,
            &[5u32.to_le_bytes(), 1u32.to_le_bytes()].concat(),
        ),
        wire::TFSYNC,
    );
    ok(&f.setattr(5, 8, 0, 1), wire::TSETATTR);
    ok(&f.setattr(5, 1, 0o600, 0), wire::TSETATTR);
    // uid and gid left as they are (-1), and both times set to now.
    let mut b = Vec::new();
    for v in [5u32, 0x2 | 0x4 | 0x10 | 0x20, 0, u32::MAX, u32::MAX] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&[0; 40]);
    ok(&f.rpc(wire::TSETATTR, &b), wire::TSETATTR);
    let mut lock = 5u32.to_le_bytes().to_vec();
    lock.push(1);
    lock.extend_from_slice(&[0; 4 + 8 + 8 + 4]);
    wire::put_str(&mut lock, b"client");
    ok(&f.rpc(wire::TLOCK, &lock), wire::TLOCK);
    ok(&f.mkdir(ROOT, b"d"), wire::TMKDIR);
    ok(&f.renameat(ROOT, b"new", ROOT, b"new2"), wire::TRENAMEAT);
    ok(&f.link(ROOT, 5, b"new3"), wire::TLINK);
    ok(&f.unlinkat(ROOT, b"new3", 0), wire::TUNLINKAT);
    ok(
        &f.unlinkat(ROOT, b"d", libc::AT_REMOVEDIR as u32),
        wire::TUNLINKAT,
    );
    f.walk_ok(ROOT, 6, &[b"sub", b"..", b".."]);
    err(&f.walk(ROOT, 7, &[b"nonesuch"]), libc::ENOENT);
    ok(&f.clunk(5), wire::TCLUNK);
    f.gate.reset();
}
