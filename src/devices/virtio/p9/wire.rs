//! 9P2000.L framing, only as far as the gate needs it: reading the fields
//! of a request without ever reading past the message, reading the few
//! reply fields it mirrors, and writing the messages kvmini makes itself
//! (Rlerror and Rwalk for the guest; Twalk, Tclunk and Tversion for the
//! server). Everything else about 9P is the p9 crate's.
//!
//! Every message is `size[4] type[1] tag[2]` followed by its body, all
//! little-endian; a string is `len[2]` and that many bytes.

/// Bytes before a message's body: size, type and tag.
pub const HEADER: usize = 7;
/// An Rlerror: the header and an errno.
pub const RLERROR_LEN: usize = HEADER + 4;
/// A qid: type[1] version[4] path[8].
pub const QID_LEN: usize = 13;
/// The most names one Twalk may carry (MAXWELEM in the protocol).
pub const MAX_WALK_NAMES: usize = 16;

// Message types (include/net/9p/9p.h); each reply is its request plus one.
pub const RLERROR: u8 = 7;
pub const TSTATFS: u8 = 8;
pub const TLOPEN: u8 = 12;
pub const TLCREATE: u8 = 14;
pub const TSYMLINK: u8 = 16;
pub const TMKNOD: u8 = 18;
pub const TRENAME: u8 = 20;
pub const TREADLINK: u8 = 22;
pub const TGETATTR: u8 = 24;
pub const TSETATTR: u8 = 26;
pub const TXATTRWALK: u8 = 30;
pub const TXATTRCREATE: u8 = 32;
pub const TREADDIR: u8 = 40;
pub const TFSYNC: u8 = 50;
pub const TLOCK: u8 = 52;
pub const TGETLOCK: u8 = 54;
pub const TLINK: u8 = 70;
pub const TMKDIR: u8 = 72;
pub const TRENAMEAT: u8 = 74;
pub const TUNLINKAT: u8 = 76;
pub const TVERSION: u8 = 100;
pub const TAUTH: u8 = 102;
pub const TATTACH: u8 = 104;
pub const TFLUSH: u8 = 108;
pub const TWALK: u8 = 110;
pub const TREAD: u8 = 116;
pub const TWRITE: u8 = 118;
pub const TCLUNK: u8 = 120;
pub const TREMOVE: u8 = 122;

/// The qid type bits of a directory and of a symbolic link.
pub const QTDIR: u8 = 0x80;
pub const QTSYMLINK: u8 = 0x02;

/// A server's unique identification of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Qid {
    pub ty: u8,
    pub version: u32,
    pub path: u64,
}

impl Qid {
    pub fn parse(b: &[u8]) -> Option<Qid> {
        let mut f = Fields::new(b);
        Some(Qid {
            ty: f.u8()?,
            version: f.u32()?,
            path: f.u64()?,
        })
    }

    pub fn put(&self, out: &mut Vec<u8>) {
        out.push(self.ty);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.path.to_le_bytes());
    }
}

/// Reads fields in order from a message body; every read is checked
/// against the body's end, and a short body reads as None.
pub struct Fields<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Fields { buf, at: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let bytes = self.buf.get(self.at..end)?;
        self.at = end;
        Some(bytes)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    /// A string's bytes (not checked as UTF-8 here).
    pub fn str(&mut self) -> Option<&'a [u8]> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// `n` raw bytes (a Twrite's data).
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        self.take(n)
    }

    /// Where the next field starts, from the body's start.
    pub fn offset(&self) -> usize {
        self.at
    }

    /// True when every byte was read: a request with trailing bytes is
    /// refused, so what the gate checked is all the server sees.
    pub fn at_end(&self) -> bool {
        self.at == self.buf.len()
    }
}

/// A message's type and tag, and its body.
pub fn split(msg: &[u8]) -> Option<(u8, u16, &[u8])> {
    let ty = *msg.get(4)?;
    let tag = u16::from_le_bytes(msg.get(5..7)?.try_into().ok()?);
    Some((ty, tag, msg.get(HEADER..)?))
}

/// Starts a message of type `ty`; [`finish`] fills in its size.
pub fn start(ty: u8, tag: u16) -> Vec<u8> {
    let mut m = vec![0u8; 4];
    m.push(ty);
    m.extend_from_slice(&tag.to_le_bytes());
    m
}

pub fn finish(mut m: Vec<u8>) -> Vec<u8> {
    // Every message kvmini builds is far below 4 GiB (at most a Twalk of
    // 16 names of at most 64 KiB each, or an Rwalk of 16 qids).
    let size = u32::try_from(m.len()).unwrap_or(u32::MAX);
    m[..4].copy_from_slice(&size.to_le_bytes());
    m
}

pub fn put_str(m: &mut Vec<u8>, s: &[u8]) {
    // Names come from checked requests (at most u16::MAX bytes each).
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    m.extend_from_slice(&len.to_le_bytes());
    m.extend_from_slice(&s[..usize::from(len)]);
}

pub fn rlerror(tag: u16, errno: i32) -> Vec<u8> {
    let mut m = start(RLERROR, tag);
    m.extend_from_slice(&(errno as u32).to_le_bytes());
    finish(m)
}

pub fn rwalk(tag: u16, qids: &[Qid]) -> Vec<u8> {
    let mut m = start(TWALK + 1, tag);
    m.extend_from_slice(&(qids.len() as u16).to_le_bytes());
    for q in qids {
        q.put(&mut m);
    }
    finish(m)
}

pub fn twalk(tag: u16, fid: u32, newfid: u32, names: &[&[u8]]) -> Vec<u8> {
    let mut m = start(TWALK, tag);
    m.extend_from_slice(&fid.to_le_bytes());
    m.extend_from_slice(&newfid.to_le_bytes());
    m.extend_from_slice(&(names.len() as u16).to_le_bytes());
    for n in names {
        put_str(&mut m, n);
    }
    finish(m)
}

pub fn tclunk(tag: u16, fid: u32) -> Vec<u8> {
    let mut m = start(TCLUNK, tag);
    m.extend_from_slice(&fid.to_le_bytes());
    finish(m)
}

pub fn tversion(tag: u16, msize: u32, version: &[u8]) -> Vec<u8> {
    let mut m = start(TVERSION, tag);
    m.extend_from_slice(&msize.to_le_bytes());
    put_str(&mut m, version);
    finish(m)
}

/// A reply's type and body, if it is one at all.
pub fn reply(r: &[u8]) -> Option<(u8, &[u8])> {
    let (ty, _, body) = split(r)?;
    Some((ty, body))
}

/// The qids of a successful Rwalk.
pub fn rwalk_qids(r: &[u8]) -> Option<Vec<Qid>> {
    let (ty, body) = reply(r)?;
    if ty != TWALK + 1 {
        return None;
    }
    let mut f = Fields::new(body);
    let n = f.u16()?;
    (0..n)
        .map(|_| Qid::parse(f.bytes(QID_LEN)?))
        .collect::<Option<Vec<_>>>()
}

/// The qid an Rattach or Rlcreate (`ty`) leads with.
pub fn reply_qid(r: &[u8], ty: u8) -> Option<Qid> {
    match reply(r)? {
        (t, body) if t == ty => Qid::parse(body.get(..QID_LEN)?),
        _ => None,
    }
}
