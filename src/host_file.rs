//! Opening the files a user names, without ever blocking: a FIFO, a
//! terminal or a device behind a path must not hold the thread that
//! enforces `--timeout` and handles signals.
//!
//! Every open is non-blocking (O_NONBLOCK): opening a FIFO for reading
//! returns at once, and opening one for writing with no reader fails with
//! ENXIO, which [`open_output`] turns into a message. What kvmini reads
//! whole before the guest starts (kernel, initramfs, `--input`) must be a
//! regular file, since only a regular file can be read without waiting on
//! whoever writes it; what it writes (logs, `file=`) is written only when
//! the descriptor takes it, so a reader that stops reading stalls the
//! guest's output, never kvmini.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// What a path turned out to be, for messages: "a FIFO", "a directory".
pub fn describe(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO or pipe"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading without blocking and checks that it is a
/// regular file, which can be read whole without waiting for a writer.
/// A pipe, a FIFO or a device is refused with what it is.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(format!(
            "{}, not a regular file: kvmini reads it whole before the guest starts \
             (write it to a file first)",
            describe(&meta)
        )));
    }
    clear_nonblock(&f)?;
    Ok(f)
}

/// Creates `path`, or opens it, for writing without blocking, and does not
/// truncate it: [`check_outputs`] first makes sure it is not a file kvmini
/// reads or writes under another name, then [`truncate`] empties it. The
/// descriptor stays non-blocking: its writer must wait for POLLOUT.
pub fn open_output(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            // open(2) says ENXIO for a FIFO that nobody has open for reading.
            Some(libc::ENXIO) => {
                io::Error::other("a FIFO that nobody is reading (start its reader first)")
            }
            _ => e,
        })
}

fn clear_nonblock(f: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor `f` owns; F_GETFL reads its flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above; F_SETFL changes only its status flags.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The identity of an open file (device and inode), to tell when two
/// outputs are the same file however they are spelt.
pub fn identity(f: &File) -> Option<(u64, u64)> {
    f.metadata().ok().map(|m| (m.dev(), m.ino()))
}

/// The identity of a regular file: only regular files are compared (two
/// outputs to /dev/null, or to one terminal, are fine).
fn regular_identity(meta: &Metadata) -> Option<(u64, u64)> {
    meta.is_file().then(|| (meta.dev(), meta.ino()))
}

/// Refuses an output (named as the user spelt it, "--serial-log s.log")
/// that is the same regular file as another output, whose bytes would
/// interleave, or as an input (kernel, initramfs, `--input`, a disk image),
/// which it would overwrite. Says which two, comparing device and inode.
pub fn check_outputs(
    outputs: &[(String, &File)],
    inputs: &[(String, &Path)],
) -> Result<(), String> {
    let outs: Vec<(&str, Option<(u64, u64)>)> = outputs
        .iter()
        .map(|(n, f)| {
            (
                n.as_str(),
                f.metadata().ok().as_ref().and_then(regular_identity),
            )
        })
        .collect();
    let ins = inputs.iter().map(|(n, p)| {
        (
            n.as_str(),
            std::fs::metadata(p)
                .ok()
                .as_ref()
                .and_then(regular_identity),
        )
    });
    let others: Vec<(&str, Option<(u64, u64)>)> = outs.iter().copied().chain(ins).collect();
    for (i, (name, id)) in outs.iter().enumerate() {
        let Some(id) = id else { continue };
        if let Some((other, _)) = others
            .iter()
            .enumerate()
            .find(|&(j, (_, o))| j != i && *o == Some(*id))
            .map(|(_, o)| o)
        {
            return Err(format!("{name}: the same file as {other}"));
        }
    }
    Ok(())
}

/// Empties an output opened by [`open_output`] if it is a regular file.
pub fn truncate(f: &File) -> io::Result<()> {
    if f.metadata()?.is_file() {
        f.set_len(0)?;
    }
    Ok(())
}

/// How long [`write_all_waiting`] waits for a reader that does not read.
pub const WRITE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes all of `bytes` to an output opened by [`open_output`] (which is
/// non-blocking), waiting for POLLOUT when a FIFO or a pipe is full, but
/// never longer than [`WRITE_PATIENCE`] in all: a reader that stopped
/// reading cannot hold kvmini's exit.
pub fn write_all_waiting(mut f: &File, mut bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let give_up = std::time::Instant::now() + WRITE_PATIENCE;
    while !bytes.is_empty() {
        match f.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = give_up.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(io::Error::other(format!(
                        "its reader took no data for {} s",
                        WRITE_PATIENCE.as_secs()
                    )));
                }
                let mut pfd = libc::pollfd {
                    fd: f.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fifo(tag: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("kvmini-fifo-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string; mkfifo creates the node or fails.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        p
    }

    #[test]
    fn a_fifo_is_refused_at_once_both_ways() {
        let p = fifo("both");
        let e = open_regular(&p).unwrap_err();
        assert!(e.to_string().contains("a FIFO or pipe"), "{e}");
        let e = open_output(&p).unwrap_err();
        assert!(e.to_string().contains("nobody is reading"), "{e}");
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn devices_and_directories_are_not_regular() {
        for (p, what) in [("/dev/zero", "character device"), ("/", "directory")] {
            let e = open_regular(Path::new(p)).unwrap_err();
            assert!(e.to_string().contains(what), "{p}: {e}");
        }
    }

    #[test]
    fn outputs_are_compared_by_inode_and_only_regular_files() {
        let dir = std::env::temp_dir().join(format!("kvmini-same-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = open_output(&dir.join("a")).unwrap();
        let a2 = open_output(&dir.join("./a")).unwrap();
        let b = open_output(&dir.join("b")).unwrap();
        let null = open_output(Path::new("/dev/null")).unwrap();
        let null2 = open_output(Path::new("/dev/null")).unwrap();
        let named = |n: &str, f| (n.to_string(), f);
        assert!(check_outputs(
            &[
                named("x", &a),
                named("y", &b),
                named("n", &null),
                named("m", &null2)
            ],
            &[]
        )
        .is_ok());
        let e = check_outputs(
            &[named("--serial-log a", &a), named("--serial file=./a", &a2)],
            &[],
        )
        .unwrap_err();
        assert_eq!(e, "--serial-log a: the same file as --serial file=./a");
        let kernel = dir.join("b");
        let e = check_outputs(
            &[named("--serial-log b", &b)],
            &[("--kernel b".into(), &kernel)],
        )
        .unwrap_err();
        assert_eq!(e, "--serial-log b: the same file as --kernel b");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_regular_file_reads_blocking_and_outputs_have_identities() {
        let p = std::env::temp_dir().join(format!("kvmini-reg-{}", std::process::id()));
        let out = open_output(&p).unwrap();
        let back = open_regular(&p).unwrap();
        assert_eq!(identity(&out), identity(&back));
        use std::os::fd::AsRawFd;
        // SAFETY: F_GETFL on an open descriptor.
        let flags = unsafe { libc::fcntl(back.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0);
        std::fs::remove_file(&p).unwrap();
    }
}
