//! Serial back ends: where a port's output goes and where its input comes
//! from. All of this runs on the console thread, never on a vCPU.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::config::SerialBackend;

/// Output kept for the next client while no socket client is connected.
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// Errors opening a back end; each names the flag.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{flag} file={path}: cannot open the file for writing")]
    Open {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{flag} stdio: cannot use standard output")]
    Stdout {
        flag: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{flag} pty: cannot create a pseudo-terminal")]
    Pty {
        flag: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{flag} socket={path}: cannot listen on the socket")]
    Socket {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub enum Backend {
    Stdio(File),
    /// `--exec`'s COM2: the guest init's framed output, split into
    /// kvmini's stdout and stderr (see [`crate::exec::Demux`]).
    Exec {
        stdout: File,
        stderr: File,
        demux: crate::exec::Demux,
    },
    File(File),
    Null,
    Pty {
        master: File,
        /// Held open so the master never sees a hang-up between clients;
        /// None while kvmini waits for the first client (`pty,wait`), whose
        /// opening of the slave ends the master's hang-up.
        slave: Option<OwnedFd>,
        path: PathBuf,
        /// When a waited-for client was first seen to have the pty open.
        opened: Option<std::time::Instant>,
    },
    Socket {
        listener: UnixListener,
        path: PathBuf,
        client: Option<UnixStream>,
        /// A spare descriptor (a duplicate of the listener), given up when
        /// accept fails for want of descriptors, so that the waiting
        /// client can still be taken.
        reserve: Option<OwnedFd>,
        /// After an accept that failed anyway, the listener is not polled
        /// until then (it stays readable: polling it would spin).
        paused_until: Option<std::time::Instant>,
    },
}

/// How long a terminal program has, after opening a waited-for pty, before
/// the guest starts.
pub const PTY_SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

/// How long the listener rests after an accept that failed.
const ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// A Unix socket path's limit (sun_path, NUL included).
const SUN_PATH_MAX: usize = 108;

/// Binds a Unix socket listener at `path`, non-blocking. Only a stale
/// socket from an earlier run is replaced: one that something listens on
/// is in use, and anything else at the path is not kvmini's to delete. The
/// socket is bound by its absolute path where that fits, so that another
/// kvmini finds it listed (see [`listened_on`]).
pub fn listen_unix(path: &Path) -> io::Result<UnixListener> {
    let len = path.as_os_str().len();
    if len >= SUN_PATH_MAX {
        return Err(io::Error::other(format!(
            "the path is {len} bytes; a Unix socket's path must be shorter \
             than {SUN_PATH_MAX} (use a shorter or relative path)"
        )));
    }
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) {
            return Err(io::Error::other("the path exists and is not a socket"));
        }
        if listened_on(path)? {
            return Err(io::Error::other(
                "in use: something is listening on it (another kvmini?)",
            ));
        }
        let _ = std::fs::remove_file(path);
    }
    let bind_path = std::path::absolute(path)
        .ok()
        .filter(|a| a.as_os_str().len() < SUN_PATH_MAX)
        .unwrap_or_else(|| path.to_path_buf());
    let listener = UnixListener::bind(&bind_path)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Whether something listens on the socket at `path`. kvmini binds its
/// sockets by absolute path, so another kvmini's listener is found in
/// /proc/net/unix without connecting to it (a connection would be taken
/// as its client and be given its boot log). Anything else is asked with
/// a non-blocking connect: accepted or queued (EAGAIN: a full backlog)
/// means a listener; ECONNREFUSED means the socket is stale.
fn listened_on(path: &Path) -> io::Result<bool> {
    if let Ok(abs) = std::path::absolute(path) {
        if listed_as_listening(&abs) {
            return Ok(true);
        }
    }
    connect_probe(path)
}

/// True if /proc/net/unix lists a listening socket bound to `path`
/// (flags __SO_ACCEPTCON).
fn listed_as_listening(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    let want = path.as_os_str().as_encoded_bytes();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() == 8 && fields[3] == "00010000" && fields[7].as_bytes() == want
    })
}

fn connect_probe(path: &Path) -> io::Result<bool> {
    // SAFETY: socket(2) returns a new descriptor or -1.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: fd is a new descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_encoded_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    for (d, &b) in addr.sun_path.iter_mut().zip(bytes) {
        *d = b as libc::c_char;
    }
    // SAFETY: a valid sockaddr_un of the given size.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINPROGRESS) => Ok(true),
        Some(libc::ECONNREFUSED) => Ok(false),
        _ => Err(e),
    }
}

/// Most bytes written to a pipe or terminal at once after poll said it is
/// writable: a pipe then has at least this much room, so the write does not
/// block.
const WRITE_CHUNK: usize = 4096;

/// True if `fd` can take output now.
fn writable(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & libc::POLLOUT != 0
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Creates a pseudo-terminal in raw mode; returns master, slave and path.
fn open_pty() -> io::Result<(File, OwnedFd, PathBuf)> {
    // SAFETY: posix_openpt returns a new descriptor or -1.
    let master =
        cvt(unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?;
    // SAFETY: master is a descriptor nobody else owns.
    let master = unsafe { File::from_raw_fd(master) };
    // SAFETY: valid pty master descriptor.
    cvt(unsafe { libc::grantpt(master.as_raw_fd()) })?;
    // SAFETY: valid pty master descriptor.
    cvt(unsafe { libc::unlockpt(master.as_raw_fd()) })?;
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: the buffer is valid for its length.
    let rc = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: ptsname_r NUL-terminated the buffer.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let cpath = std::ffi::CString::new(path.clone()).map_err(io::Error::other)?;
    // SAFETY: a valid C string; a new descriptor or -1.
    let slave = cvt(unsafe {
        libc::open(
            cpath.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: slave is a descriptor nobody else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    // Raw mode, so the guest's bytes pass unchanged both ways.
    // SAFETY: termios is plain data filled by tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and termios pointer.
    cvt(unsafe { libc::tcgetattr(slave.as_raw_fd(), &mut t) })?;
    // SAFETY: t is a valid termios.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: valid descriptor and termios pointer.
    cvt(unsafe { libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t) })?;
    set_nonblocking(master.as_raw_fd())?;
    Ok((master, slave, PathBuf::from(path)))
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

impl Backend {
    /// Opens `cfg` for the port behind `flag` (e.g. "--serial").
    pub fn open(cfg: &SerialBackend, flag: &'static str, wait: bool) -> Result<Self, Error> {
        Ok(match cfg {
            SerialBackend::Stdio => Backend::Stdio(File::from(
                io::stdout()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|source| Error::Stdout { flag, source })?,
            )),
            SerialBackend::File(path) => {
                Backend::File(crate::host_file::open_output(path).map_err(|source| {
                    Error::Open {
                        flag,
                        path: path.clone(),
                        source,
                    }
                })?)
            }
            SerialBackend::Null => Backend::Null,
            SerialBackend::ExecStreams => {
                let dup = |fd: std::os::fd::BorrowedFd| {
                    fd.try_clone_to_owned()
                        .map(File::from)
                        .map_err(|source| Error::Stdout { flag, source })
                };
                Backend::Exec {
                    stdout: dup(io::stdout().as_fd())?,
                    stderr: dup(io::stderr().as_fd())?,
                    demux: Default::default(),
                }
            }
            SerialBackend::Pty => {
                let (master, slave, path) =
                    open_pty().map_err(|source| Error::Pty { flag, source })?;
                // The one place kvmini talks to the user directly: the pty's
                // name is what they need to attach.
                if wait {
                    eprintln!(
                        "kvmini: {flag} is on {}; the guest starts when a client opens it",
                        path.display()
                    );
                } else {
                    eprintln!("kvmini: {flag} is on {}", path.display());
                }
                Backend::Pty {
                    master,
                    slave: (!wait).then_some(slave),
                    path,
                    opened: None,
                }
            }
            SerialBackend::Socket(path) => {
                let err = |source| Error::Socket {
                    flag,
                    path: path.clone(),
                    source,
                };
                let listener = listen_unix(path).map_err(err)?;
                let reserve = listener.as_fd().try_clone_to_owned().ok();
                if wait {
                    eprintln!(
                        "kvmini: {flag} is listening on {}; the guest starts when a client \
                         connects",
                        path.display()
                    );
                } else {
                    eprintln!("kvmini: {flag} is listening on {}", path.display());
                }
                Backend::Socket {
                    listener,
                    path: path.clone(),
                    client: None,
                    reserve,
                    paused_until: None,
                }
            }
        })
    }

    /// The descriptor output goes to now, if any (none for `null`, or a
    /// socket without a client).
    pub fn output_fd(&self) -> Option<RawFd> {
        match self {
            Backend::Stdio(f) | Backend::File(f) => Some(f.as_raw_fd()),
            Backend::Exec {
                stdout,
                stderr,
                demux,
            } => Some(match demux.current {
                crate::exec::Stream::Stdout => stdout.as_raw_fd(),
                crate::exec::Stream::Stderr => stderr.as_raw_fd(),
            }),
            Backend::Null => None,
            Backend::Pty { master, .. } => Some(master.as_raw_fd()),
            Backend::Socket { client, .. } => client.as_ref().map(|c| c.as_raw_fd()),
        }
    }

    /// Lossy back ends keep only the newest [`REPLAY_LIMIT`] bytes that
    /// nobody has taken; the others make the guest wait instead.
    pub fn is_lossy(&self) -> bool {
        matches!(self, Backend::Pty { .. } | Backend::Socket { .. })
    }

    /// Writes some of `buf` without blocking; returns how much was taken
    /// (0 when the back end cannot take output now). `null` takes all.
    pub fn write_some(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Backend::Null => Ok(buf.len()),
            Backend::Stdio(f) | Backend::File(f) => {
                if !writable(f.as_raw_fd()) {
                    return Ok(0);
                }
                retry(|| f.write(&buf[..buf.len().min(WRITE_CHUNK)]))
            }
            Backend::Exec {
                stdout,
                stderr,
                demux,
            } => write_demuxed(stdout, stderr, demux, buf),
            Backend::Pty { master, .. } => retry(|| master.write(buf)),
            Backend::Socket { client, .. } => {
                let Some(c) = client else { return Ok(0) };
                match retry(|| c.write(buf)) {
                    Ok(n) if n > 0 || buf.is_empty() => Ok(n),
                    Ok(_) | Err(_) => {
                        log::info!("serial socket client went away");
                        *client = None;
                        Ok(0)
                    }
                }
            }
        }
    }

    /// The descriptor to poll for input, if this back end has input of its
    /// own (stdio input is handled by the console, from fd 0).
    pub fn input_fd(&self) -> Option<RawFd> {
        match self {
            Backend::Pty { master, .. } => Some(master.as_raw_fd()),
            Backend::Socket {
                client: Some(c), ..
            } => Some(c.as_raw_fd()),
            _ => None,
        }
    }

    /// The descriptor to poll for a new client, if one is awaited.
    pub fn listen_fd(&self) -> Option<RawFd> {
        match self {
            Backend::Socket {
                listener,
                client: None,
                paused_until,
                ..
            } if paused_until.is_none_or(|t| t <= std::time::Instant::now()) => {
                Some(listener.as_raw_fd())
            }
            _ => None,
        }
    }

    /// True once a client is there: a socket client connected, or a pty
    /// whose slave someone opened (kvmini then holds the slave too). Other
    /// back ends have no client to wait for.
    pub fn has_client(&mut self) -> bool {
        match self {
            Backend::Socket { client, .. } => client.is_some(),
            Backend::Pty { slave: Some(_), .. } => true,
            Backend::Pty {
                master,
                slave,
                path,
                opened,
            } => {
                let mut p = libc::pollfd {
                    fd: master.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, no waiting.
                unsafe { libc::poll(&mut p, 1, 0) };
                if p.revents & libc::POLLHUP != 0 {
                    *opened = None;
                    return false;
                }
                // A terminal program flushes the pty and sets its modes
                // right after opening it: the guest starts once it has had
                // PTY_SETTLE to do so, not in the middle.
                let now = std::time::Instant::now();
                let since = *opened.get_or_insert(now);
                if now < since + PTY_SETTLE {
                    return false;
                }
                // Someone opened the slave: hold it as well, as without wait.
                *slave = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_NOCTTY)
                    .open(&*path)
                    .ok()
                    .map(OwnedFd::from);
                true
            }
            _ => true,
        }
    }

    /// When a paused listener should be polled again.
    pub fn wake_at(&self) -> Option<std::time::Instant> {
        match self {
            Backend::Socket {
                client: None,
                paused_until,
                ..
            } => paused_until.filter(|&t| t > std::time::Instant::now()),
            _ => None,
        }
    }

    /// Accepts a waiting client. What it missed is still in the port's
    /// output buffer and goes to it next.
    pub fn accept(&mut self) {
        if let Backend::Socket {
            listener,
            client,
            reserve,
            paused_until,
            ..
        } = self
        {
            if reserve.is_none() {
                // The client the spare made room for has gone since.
                *reserve = listener.as_fd().try_clone_to_owned().ok();
            }
            let mut accepted = listener.accept();
            if let Err(e) = &accepted {
                if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
                    && reserve.is_some()
                {
                    // Out of descriptors: the spare one makes room for
                    // this client (and is taken again when it can be).
                    *reserve = None;
                    accepted = listener.accept();
                }
            }
            match accepted {
                Ok((c, _)) => {
                    *paused_until = None;
                    if c.set_nonblocking(true).is_ok() {
                        log::info!("serial socket client connected");
                        *client = Some(c);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    if paused_until.is_none() {
                        log::warn!("serial socket: cannot accept a client: {e}; retrying");
                    }
                    *paused_until = Some(std::time::Instant::now() + ACCEPT_PAUSE);
                }
            }
        }
    }

    /// Reads input from the back end's own input. Ok(0) means "nothing now"
    /// (a socket client that left is dropped; a pty waits for the next).
    pub fn read_input(&mut self, buf: &mut [u8]) -> usize {
        match self {
            Backend::Pty { master, .. } => master.read(buf).unwrap_or(0),
            Backend::Socket { client, .. } => {
                let n = client.as_mut().map(|c| c.read(buf));
                match n {
                    Some(Ok(n)) if n > 0 => n,
                    Some(Err(e))
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) =>
                    {
                        0
                    }
                    Some(_) => {
                        log::info!("serial socket client disconnected");
                        *client = None;
                        0
                    }
                    None => 0,
                }
            }
            _ => 0,
        }
    }

    /// The file this back end writes to, if it is one (stdout or file=).
    pub fn file(&self) -> Option<&File> {
        match self {
            Backend::Stdio(f) | Backend::File(f) => Some(f),
            _ => None,
        }
    }

    pub fn is_stdio(&self) -> bool {
        matches!(self, Backend::Stdio(_))
    }

    /// Removes the socket file, if any.
    pub fn cleanup(&self) {
        if let Backend::Socket { path, .. } = self {
            remove_socket(path);
        }
    }
}

/// Writes what of the framed `buf` its streams take now, never blocking;
/// returns how many framed bytes are done with.
fn write_demuxed(
    stdout: &mut File,
    stderr: &mut File,
    demux: &mut crate::exec::Demux,
    buf: &[u8],
) -> io::Result<usize> {
    use crate::exec::{Step, Stream};
    let mut at = 0;
    while let Some(step) = demux.next(&buf[at..]) {
        let n = match step {
            Step::Control(n) => n,
            Step::Data(stream, len) => {
                let f = match stream {
                    Stream::Stdout => &mut *stdout,
                    Stream::Stderr => &mut *stderr,
                };
                if !writable(f.as_raw_fd()) {
                    break;
                }
                match retry(|| f.write(&buf[at..at + len.min(WRITE_CHUNK)])) {
                    Ok(0) => break,
                    Ok(n) => n,
                    // What was written so far counts; the error comes back
                    // on the next call.
                    Err(_) if at > 0 => break,
                    Err(e) => return Err(e),
                }
            }
        };
        demux.consumed(&buf[at..], n);
        at += n;
    }
    Ok(at)
}

/// Runs `op` again when a signal interrupted it; maps "would block" to 0.
fn retry(mut op: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            r => return r,
        }
    }
}

fn remove_socket(path: &Path) {
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_takes_output_only_with_a_client_and_never_blocks() {
        let path = std::env::temp_dir().join(format!("kvmini-sock-{}", std::process::id()));
        let mut b = Backend::open(&SerialBackend::Socket(path.clone()), "--serial", false).unwrap();
        assert!(b.is_lossy());
        assert_eq!(b.write_some(b"early").unwrap(), 0);
        assert!(b.output_fd().is_none() && b.listen_fd().is_some());
        let mut c = UnixStream::connect(&path).unwrap();
        b.accept();
        assert!(b.listen_fd().is_none());
        assert_eq!(b.write_some(b"live").unwrap(), 4);
        let mut got = [0u8; 4];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"live");
        // A client that stops reading: writes stop being taken, at once.
        let chunk = vec![b'x'; 65536];
        let mut taken = 0;
        for _ in 0..64 {
            taken += b.write_some(&chunk).unwrap();
        }
        assert!(taken < 64 * chunk.len());
        drop(c);
        let mut buf = [0u8; 8];
        assert_eq!(b.read_input(&mut buf), 0);
        assert!(
            b.listen_fd().is_some(),
            "a departed client makes room for the next"
        );
        b.cleanup();
    }
}
