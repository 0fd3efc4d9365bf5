//! Serial back ends: where a port's output goes and where its input comes
//! from. All of this runs on the console thread, never on a vCPU.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
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
    File(File),
    Null,
    Pty {
        master: File,
        /// Held open so the master never sees a hang-up between clients.
        _slave: OwnedFd,
    },
    Socket {
        listener: UnixListener,
        path: PathBuf,
        client: Option<UnixStream>,
    },
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
    pub fn open(cfg: &SerialBackend, flag: &'static str) -> Result<Self, Error> {
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
            SerialBackend::Pty => {
                let (master, slave, path) =
                    open_pty().map_err(|source| Error::Pty { flag, source })?;
                // The one place kvmini talks to the user directly: the pty's
                // name is what they need to attach.
                eprintln!("kvmini: {flag} is on {}", path.display());
                Backend::Pty {
                    master,
                    _slave: slave,
                }
            }
            SerialBackend::Socket(path) => {
                let err = |source| Error::Socket {
                    flag,
                    path: path.clone(),
                    source,
                };
                // A stale socket from an earlier run would make bind fail.
                if std::fs::symlink_metadata(path)
                    .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                    .unwrap_or(false)
                {
                    let _ = std::fs::remove_file(path);
                }
                let listener = UnixListener::bind(path).map_err(err)?;
                listener.set_nonblocking(true).map_err(err)?;
                Backend::Socket {
                    listener,
                    path: path.clone(),
                    client: None,
                }
            }
        })
    }

    /// The descriptor output goes to now, if any (none for `null`, or a
    /// socket without a client).
    pub fn output_fd(&self) -> Option<RawFd> {
        match self {
            Backend::Stdio(f) | Backend::File(f) => Some(f.as_raw_fd()),
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
                ..
            } => Some(listener.as_raw_fd()),
            _ => None,
        }
    }

    /// Accepts a waiting client. What it missed is still in the port's
    /// output buffer and goes to it next.
    pub fn accept(&mut self) {
        if let Backend::Socket {
            listener, client, ..
        } = self
        {
            if let Ok((c, _)) = listener.accept() {
                if c.set_nonblocking(true).is_ok() {
                    log::info!("serial socket client connected");
                    *client = Some(c);
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
        let mut b = Backend::open(&SerialBackend::Socket(path.clone()), "--serial").unwrap();
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
