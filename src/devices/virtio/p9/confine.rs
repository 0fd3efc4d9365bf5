//! The gate in front of the p9 server: every request is parsed and checked
//! here before p9 sees it, so the guest never reaches a host path outside
//! the share, a read-only share is never changed, and no request makes the
//! server hold more than a bounded number of files.
//!
//! What p9 (0.3.2) does by itself, and what the gate adds:
//! - p9 opens every name with `openat(dir_fd, name, O_PATH | O_NOFOLLOW)`
//!   (walks) or `openat`/`mkdirat`/`unlinkat`/`renameat`/`linkat` relative
//!   to a directory fid: a name holding `/` would be a path whose middle
//!   symlinks are followed, and an absolute one would ignore the directory.
//!   The gate refuses every name that is empty, holds `/` or NUL, or is not
//!   UTF-8 (EINVAL), and `.` and `..` as the name of anything created,
//!   linked, renamed or removed.
//! - p9 walks `..` from its root to the root's parent (crosvm runs it in a
//!   chroot). The gate knows each fid's qid and the qid of the attach it
//!   descends from; a walk holding `..` is taken one name at a time on an
//!   internal fid, and a `..` whose starting directory is the root is
//!   walked as `.`: the root is its own parent, as in Plan 9. A readdir of
//!   the root reports the root's own qid for its `..` entry.
//! - p9 never follows a symlink it walks to (O_NOFOLLOW), but opens,
//!   changes and links a fid through `/proc/self/fd/N`. A fid whose qid is
//!   a symlink may only be read as a link (Treadlink), stat'ed, walked
//!   from (which fails: it is no directory) and clunked; Tlopen, Tsetattr
//!   and Tlink of it get ELOOP. p9 itself refuses Tsymlink and Tmknod, so
//!   the guest cannot make new links or device nodes.
//! - A read-only share answers EROFS to every request that could change
//!   it (Twrite, Tlcreate, Tmkdir, Tsymlink, Tmknod, Tlink, Trename,
//!   Trenameat, Tunlinkat, Tremove, Tsetattr, Txattrcreate, and a Tlopen
//!   for writing, truncating or creating), whatever the guest mounted.
//! - Each fid holds up to two host descriptors in p9 (its O_PATH one and
//!   an open file); the gate refuses a new fid past `max_fids` (EMFILE).
//! - Tlopen always adds O_NONBLOCK: opening a FIFO someone left in the
//!   share must not block the worker (and so the VM's shutdown).
//! - Tlcreate and Tsetattr drop the set-user-ID and set-group-ID bits
//!   (a directory keeps set-group-ID): the guest cannot plant a program
//!   that runs with the host user's identity (root's, when kvmini runs as
//!   root) for whoever on the host starts it.
//! - Every length in a request is checked against the message (a Twrite's
//!   count against its data, strings against the end), trailing bytes are
//!   refused, Twalk carries at most 16 names, and Tread/Treaddir counts are
//!   cut to what the guest's reply buffers hold.
//!
//! The server acts with kvmini's own user's permissions, and host errors
//! reach the guest as their errno (p9's Rlerror). What the gate cannot
//! stop: a host process that moves a directory out of the share while the
//! guest holds a fid inside it has given the guest that directory.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;

use super::wire::{self, Fields, Qid};

/// The fid the gate walks with; the guest may not use it (EBADF).
pub const INTERNAL_FID: u32 = u32::MAX - 1;
/// p9's largest message (64 KiB of payload and a header); Tversion may
/// lower it.
pub const MAX_MSIZE: u32 = 64 * 1024 + 24;

// Tlopen/Tlcreate flags that matter here (include/net/9p/9p.h).
const P9_ACCMODE: u32 = 0o3;
const P9_CREATE: u32 = 0o100;
const P9_TRUNC: u32 = 0o1000;
const P9_NONBLOCK: u32 = 0o4000;
const P9_SETATTR_MODE: u32 = 1;
/// The set-user-ID and set-group-ID bits, which a guest may not give a
/// host file.
const SET_ID: u32 = libc::S_ISUID | libc::S_ISGID;

/// What the gate knows of a fid: its qid (type and inode) as the server
/// last reported it, and the qid of the share's root it was attached at.
#[derive(Clone, Copy, Debug)]
struct FidState {
    qid: Qid,
    root: Qid,
}

impl FidState {
    fn is_symlink(&self) -> bool {
        self.qid.ty & wire::QTSYMLINK != 0
    }

    fn is_dir(&self) -> bool {
        self.qid.ty & wire::QTDIR != 0
    }

    /// The share's root. Compared by inode: another directory with the
    /// root's inode number (the root of a file system mounted inside the
    /// share) is taken as its own parent too, which confines more, never
    /// less.
    fn at_root(&self) -> bool {
        self.qid.path == self.root.path
    }
}

/// Why a request is answered by the gate instead of the server.
type Refusal = i32;

pub struct Gate {
    server: p9::Server,
    read_only: bool,
    max_fids: usize,
    /// The server's message size, as it negotiated it.
    msize: u32,
    fids: BTreeMap<u32, FidState>,
}

impl Gate {
    /// A gate and server for the directory `root` (absolute, with no
    /// symlink in it: p9 opens it with O_NOFOLLOW at every Tattach).
    pub fn new(root: &Path, read_only: bool, max_fids: usize) -> std::io::Result<Gate> {
        let server = p9::Server::new(root, Default::default(), Default::default())?;
        Ok(Gate {
            server,
            read_only,
            max_fids,
            msize: MAX_MSIZE,
            fids: BTreeMap::new(),
        })
    }

    /// The largest request the server takes now.
    pub fn msize(&self) -> u32 {
        self.msize
    }

    /// The fids the guest holds.
    pub fn fid_count(&self) -> usize {
        self.fids.len()
    }

    /// The driver reset the device: every fid is dropped (an internal
    /// Tversion makes p9 close them), as the next driver starts over.
    pub fn reset(&mut self) {
        let _ = self.call(&wire::tversion(0, self.msize, b"9P2000.L"));
        self.fids.clear();
    }

    /// Serves one request: `msg` is the whole message, its size field
    /// equal to its length (the caller checked). `room` is how many bytes
    /// the guest can take back; a reply never exceeds it when `room` is at
    /// least [`wire::RLERROR_LEN`] (a longer reply becomes EMSGSIZE).
    pub fn handle(&mut self, msg: &[u8], room: usize) -> Vec<u8> {
        let Some((ty, tag, body)) = wire::split(msg) else {
            return wire::rlerror(0, libc::EINVAL);
        };
        let reply = match self.check(ty, body, room) {
            Ok(None) => self.serve(ty, tag, msg, body),
            Ok(Some((at, value))) => {
                let mut patched = msg.to_vec();
                patched[at..at + 4].copy_from_slice(&value.to_le_bytes());
                self.serve(ty, tag, &patched, body)
            }
            Err(errno) => wire::rlerror(tag, errno),
        };
        if reply.len() > room {
            return wire::rlerror(tag, libc::EMSGSIZE);
        }
        reply
    }

    fn fid(&self, fid: u32) -> Result<FidState, Refusal> {
        if fid == INTERNAL_FID {
            return Err(libc::EBADF);
        }
        self.fids.get(&fid).copied().ok_or(libc::EBADF)
    }

    fn dir(&self, fid: u32) -> Result<FidState, Refusal> {
        let s = self.fid(fid)?;
        if !s.is_dir() {
            return Err(libc::ENOTDIR);
        }
        Ok(s)
    }

    /// A fid the request creates: not the internal one, not in use, and
    /// within the limit.
    fn new_fid(&self, fid: u32) -> Result<(), Refusal> {
        if fid == INTERNAL_FID || self.fids.contains_key(&fid) {
            return Err(libc::EBADF);
        }
        if self.fids.len() >= self.max_fids {
            return Err(libc::EMFILE);
        }
        Ok(())
    }

    fn writable(&self) -> Result<(), Refusal> {
        if self.read_only {
            Err(libc::EROFS)
        } else {
            Ok(())
        }
    }

    /// Checks a request against the rules in the module's header. Ok(None)
    /// passes it on as it is; Ok(Some((at, value))) passes it with the u32
    /// at message offset `at` (a field already read, so within the
    /// message) set to `value`: a count cut or a flag added.
    fn check(&self, ty: u8, body: &[u8], room: usize) -> Result<Option<(usize, u32)>, Refusal> {
        use wire::*;
        let bad = libc::EINVAL;
        let mut f = Fields::new(body);
        let mut rewritten = None;
        match ty {
            TVERSION => {
                f.u32().ok_or(bad)?;
                f.str().ok_or(bad)?;
            }
            TAUTH => {
                f.u32().ok_or(bad)?;
                f.str().ok_or(bad)?;
                f.str().ok_or(bad)?;
                f.u32().ok_or(bad)?;
            }
            TATTACH => {
                let fid = f.u32().ok_or(bad)?;
                f.u32().ok_or(bad)?;
                f.str().ok_or(bad)?;
                f.str().ok_or(bad)?;
                f.u32().ok_or(bad)?;
                self.new_fid(fid)?;
            }
            TFLUSH => {
                f.u16().ok_or(bad)?;
            }
            TWALK => {
                let fid = f.u32().ok_or(bad)?;
                let newfid = f.u32().ok_or(bad)?;
                let n = f.u16().ok_or(bad)?;
                if usize::from(n) > MAX_WALK_NAMES {
                    return Err(bad);
                }
                for _ in 0..n {
                    walk_name(f.str().ok_or(bad)?)?;
                }
                self.fid(fid)?;
                if newfid != fid {
                    self.new_fid(newfid)?;
                }
            }
            TREAD | TREADDIR => {
                let fid = f.u32().ok_or(bad)?;
                f.u64().ok_or(bad)?;
                let at = HEADER + f.offset();
                let count = f.u32().ok_or(bad)?;
                self.fid(fid)?;
                // Rread/Rreaddir: the header and a count, then the data.
                let fits = u32::try_from(room.saturating_sub(RLERROR_LEN)).unwrap_or(u32::MAX);
                if count > fits {
                    rewritten = Some((at, fits));
                }
            }
            TWRITE => {
                let fid = f.u32().ok_or(bad)?;
                f.u64().ok_or(bad)?;
                let count = f.u32().ok_or(bad)?;
                f.bytes(count as usize).ok_or(bad)?;
                self.fid(fid)?;
                self.writable()?;
            }
            TCLUNK | TSTATFS | TREADLINK => {
                self.fid(f.u32().ok_or(bad)?)?;
            }
            TREMOVE => {
                self.fid(f.u32().ok_or(bad)?)?;
                self.writable()?;
            }
            TGETATTR => {
                self.fid(f.u32().ok_or(bad)?)?;
                f.u64().ok_or(bad)?;
            }
            TLOPEN => {
                let s = self.fid(f.u32().ok_or(bad)?)?;
                let at = HEADER + f.offset();
                let flags = f.u32().ok_or(bad)?;
                if s.is_symlink() {
                    return Err(libc::ELOOP);
                }
                if flags & (P9_ACCMODE | P9_CREATE | P9_TRUNC) != 0 {
                    self.writable()?;
                }
                rewritten = Some((at, flags | P9_NONBLOCK));
            }
            TLCREATE => {
                let dfid = f.u32().ok_or(bad)?;
                new_name(f.str().ok_or(bad)?)?;
                f.u32().ok_or(bad)?;
                let at = HEADER + f.offset();
                let mode = f.u32().ok_or(bad)?;
                f.u32().ok_or(bad)?;
                self.dir(dfid)?;
                self.writable()?;
                if mode & SET_ID != 0 {
                    rewritten = Some((at, mode & !SET_ID));
                }
            }
            TSYMLINK => {
                let dfid = f.u32().ok_or(bad)?;
                new_name(f.str().ok_or(bad)?)?;
                f.str().ok_or(bad)?;
                f.u32().ok_or(bad)?;
                self.dir(dfid)?;
                self.writable()?;
            }
            TMKNOD => {
                let dfid = f.u32().ok_or(bad)?;
                new_name(f.str().ok_or(bad)?)?;
                for _ in 0..4 {
                    f.u32().ok_or(bad)?;
                }
                self.dir(dfid)?;
                self.writable()?;
            }
            TRENAME => {
                let fid = f.u32().ok_or(bad)?;
                let dfid = f.u32().ok_or(bad)?;
                new_name(f.str().ok_or(bad)?)?;
                self.fid(fid)?;
                self.dir(dfid)?;
                self.writable()?;
            }
            TSETATTR => {
                let s = self.fid(f.u32().ok_or(bad)?)?;
                let valid = f.u32().ok_or(bad)?;
                let at = HEADER + f.offset();
                let mode = f.u32().ok_or(bad)?;
                f.u32().ok_or(bad)?;
                f.u32().ok_or(bad)?;
                // A directory may keep set-group-ID (its files inherit
                // its group); nothing may become set-user-ID.
                let strip = if s.is_dir() { libc::S_ISUID } else { SET_ID };
                if valid & P9_SETATTR_MODE != 0 && mode & strip != 0 {
                    rewritten = Some((at, mode & !strip));
                }
                for _ in 0..5 {
                    f.u64().ok_or(bad)?;
                }
                self.writable()?;
                if s.is_symlink() {
                    return Err(libc::ELOOP);
                }
            }
            TXATTRWALK => {
                let fid = f.u32().ok_or(bad)?;
                let newfid = f.u32().ok_or(bad)?;
                f.str().ok_or(bad)?;
                self.fid(fid)?;
                if newfid != fid {
                    self.new_fid(newfid)?;
                }
            }
            TXATTRCREATE => {
                self.fid(f.u32().ok_or(bad)?)?;
                f.str().ok_or(bad)?;
                f.u64().ok_or(bad)?;
                f.u32().ok_or(bad)?;
                self.writable()?;
            }
            TFSYNC => {
                self.fid(f.u32().ok_or(bad)?)?;
                f.u32().ok_or(bad)?;
            }
            TLOCK | TGETLOCK => {
                self.fid(f.u32().ok_or(bad)?)?;
                f.u8().ok_or(bad)?;
                if ty == TLOCK {
                    f.u32().ok_or(bad)?;
                }
                f.u64().ok_or(bad)?;
                f.u64().ok_or(bad)?;
                f.u32().ok_or(bad)?;
                f.str().ok_or(bad)?;
            }
            TLINK => {
                let dfid = f.u32().ok_or(bad)?;
                let fid = f.u32().ok_or(bad)?;
                new_name(f.str().ok_or(bad)?)?;
                self.dir(dfid)?;
                let target = self.fid(fid)?;
                self.writable()?;
                if target.is_symlink() {
                    return Err(libc::ELOOP);
                }
            }
            TMKDIR => {
                let dfid = f.u32().ok_or(bad)?;
                new_name(f.str().ok_or(bad)?)?;
                f.u32().ok_or(bad)?;
                f.u32().ok_or(bad)?;
                self.dir(dfid)?;
                self.writable()?;
            }
            TRENAMEAT => {
                let old = f.u32().ok_or(bad)?;
                new_name(f.str().ok_or(bad)?)?;
                let new = f.u32().ok_or(bad)?;
                new_name(f.str().ok_or(bad)?)?;
                self.dir(old)?;
                self.dir(new)?;
                self.writable()?;
            }
            TUNLINKAT => {
                let dfid = f.u32().ok_or(bad)?;
                new_name(f.str().ok_or(bad)?)?;
                f.u32().ok_or(bad)?;
                self.dir(dfid)?;
                self.writable()?;
            }
            // 9P2000's Topen, Tcreate, Tstat, Twstat and anything unknown.
            _ => return Err(libc::EOPNOTSUPP),
        }
        if !f.at_end() {
            return Err(bad);
        }
        Ok(rewritten)
    }

    /// Passes a checked request to the server (a Twalk holding `..` is
    /// walked step by step) and updates what the gate knows of its fids
    /// from the reply.
    fn serve(&mut self, ty: u8, tag: u16, msg: &[u8], body: &[u8]) -> Vec<u8> {
        let mut f = Fields::new(body);
        match ty {
            wire::TWALK => {
                let (fid, newfid) = (f.u32().unwrap_or(0), f.u32().unwrap_or(0));
                let n = f.u16().unwrap_or(0);
                let names: Vec<&[u8]> = (0..n).filter_map(|_| f.str()).collect();
                self.walk(tag, fid, newfid, &names, msg)
            }
            wire::TATTACH => {
                let fid = f.u32().unwrap_or(0);
                let reply = self.call(msg);
                if let Some(qid) = wire::reply_qid(&reply, wire::TATTACH + 1) {
                    self.fids.insert(fid, FidState { qid, root: qid });
                }
                reply
            }
            wire::TLCREATE => {
                // The fid now stands for the file it created.
                let fid = f.u32().unwrap_or(0);
                let reply = self.call(msg);
                if let (Some(qid), Some(s)) = (
                    wire::reply_qid(&reply, wire::TLCREATE + 1),
                    self.fids.get_mut(&fid),
                ) {
                    s.qid = qid;
                }
                reply
            }
            wire::TCLUNK => {
                let fid = f.u32().unwrap_or(0);
                let reply = self.call(msg);
                if wire::reply(&reply).is_some_and(|(t, _)| t == wire::TCLUNK + 1) {
                    self.fids.remove(&fid);
                }
                reply
            }
            wire::TVERSION => {
                let reply = self.call(msg);
                if let Some((t, body)) = wire::reply(&reply) {
                    if t == wire::TVERSION + 1 {
                        // p9 clunks every fid and takes the smaller size.
                        self.fids.clear();
                        if let Some(m) = Fields::new(body).u32() {
                            self.msize = m;
                        }
                    }
                }
                reply
            }
            wire::TREADDIR => {
                let fid = f.u32().unwrap_or(0);
                let mut reply = self.call(msg);
                if let Some(s) = self.fids.get(&fid).filter(|s| s.at_root()) {
                    hide_parent(&mut reply, s.qid);
                }
                reply
            }
            _ => self.call(msg),
        }
    }

    /// Whether the server itself holds `fid` (a clone of it succeeds).
    #[cfg(test)]
    pub fn server_has_fid(&mut self, fid: u32) -> bool {
        let probe = u32::MAX - 2;
        let r = self.call(&wire::twalk(0, fid, probe, &[]));
        let had = wire::rwalk_qids(&r).is_some();
        self.call(&wire::tclunk(0, probe));
        had
    }

    /// The server's reply to `msg`.
    fn call(&mut self, msg: &[u8]) -> Vec<u8> {
        let mut reply = Vec::new();
        if self
            .server
            .handle_message(&mut Cursor::new(msg), &mut reply)
            .is_err()
        {
            // Only a frame p9 cannot decode at all ends so, and the gate
            // passes none; answer something all the same.
            let tag = wire::split(msg).map_or(0, |(_, t, _)| t);
            return wire::rlerror(tag, libc::EIO);
        }
        reply
    }

    fn walk(&mut self, tag: u16, fid: u32, newfid: u32, names: &[&[u8]], msg: &[u8]) -> Vec<u8> {
        let Some(start) = self.fids.get(&fid).copied() else {
            return wire::rlerror(tag, libc::EBADF);
        };
        if !names.contains(&&b".."[..]) {
            let reply = self.call(msg);
            if let Some(qids) = wire::rwalk_qids(&reply) {
                if qids.len() == names.len() {
                    let qid = qids.last().copied().unwrap_or(start.qid);
                    self.fids.insert(
                        newfid,
                        FidState {
                            qid,
                            root: start.root,
                        },
                    );
                }
            }
            return reply;
        }
        // One name at a time on the internal fid, so that the directory
        // each `..` starts from is known: at the root it is walked as `.`.
        let first = self.call(&wire::twalk(tag, fid, INTERNAL_FID, &[]));
        if wire::rwalk_qids(&first).is_none() {
            return first;
        }
        let mut at = start;
        let mut qids = Vec::new();
        let mut failure = None;
        for &name in names {
            let name: &[u8] = if name == b".." && at.at_root() {
                b"."
            } else {
                name
            };
            let r = self.call(&wire::twalk(tag, INTERNAL_FID, INTERNAL_FID, &[name]));
            match wire::rwalk_qids(&r).as_deref() {
                Some([qid]) => {
                    qids.push(*qid);
                    at.qid = *qid;
                }
                _ => {
                    failure = Some(r);
                    break;
                }
            }
        }
        if qids.len() == names.len() {
            // Walking onto itself replaces the fid (p9 does the same).
            if newfid == fid {
                self.call(&wire::tclunk(tag, fid));
                self.fids.remove(&fid);
            }
            let r = self.call(&wire::twalk(tag, INTERNAL_FID, newfid, &[]));
            if wire::rwalk_qids(&r).is_some() {
                self.fids.insert(newfid, at);
            } else {
                failure = Some(r);
            }
        }
        self.call(&wire::tclunk(tag, INTERNAL_FID));
        match failure {
            // As a walk: an error only when the first name fails.
            Some(r) if qids.is_empty() || qids.len() == names.len() => r,
            _ => wire::rwalk(tag, &qids),
        }
    }
}

/// A walk's name: one component, neither empty nor holding `/` or NUL,
/// and UTF-8 (as 9P strings are). `.` and `..` are allowed.
fn walk_name(name: &[u8]) -> Result<(), Refusal> {
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(libc::EINVAL);
    }
    std::str::from_utf8(name).map_err(|_| libc::EINVAL)?;
    Ok(())
}

/// The name of something created, linked, renamed or removed: a walk's
/// name other than `.` and `..`.
fn new_name(name: &[u8]) -> Result<(), Refusal> {
    walk_name(name)?;
    if name == b"." || name == b".." {
        return Err(libc::EINVAL);
    }
    Ok(())
}

/// Rewrites the qid of the `..` entry in an Rreaddir of the root to the
/// root's own, so that nothing about the root's parent reaches the guest.
fn hide_parent(reply: &mut [u8], root: Qid) {
    let Some((ty, body)) = wire::reply(reply) else {
        return;
    };
    if ty != wire::TREADDIR + 1 {
        return;
    }
    let mut f = Fields::new(body);
    let Some(count) = f.u32() else { return };
    let start = wire::HEADER + 4;
    let end = start.saturating_add(count as usize).min(reply.len());
    let mut at = start;
    let mut patches = Vec::new();
    while at < end {
        let mut e = Fields::new(&reply[at..end]);
        let (Some(_), Some(_), Some(_), Some(name)) =
            (e.bytes(wire::QID_LEN), e.u64(), e.u8(), e.str())
        else {
            break;
        };
        if name == b".." {
            patches.push(at);
        }
        at += e.offset();
    }
    for at in patches {
        let mut q = Vec::with_capacity(wire::QID_LEN);
        root.put(&mut q);
        reply[at..at + wire::QID_LEN].copy_from_slice(&q);
    }
}
