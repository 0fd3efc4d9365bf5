//! `--exec COMMAND`: boot a Linux kernel on the host's own files and run
//! one command in it. kvmini shares the host's `/` read-only (tag
//! `kvmini-root`) and the current directory at its own path (tag
//! `kvmini-cwd`, writable unless `--exec-ro`), builds in memory an
//! initramfs holding its guest init (guest/exec-init.rs), the kernel's
//! 9p and virtio-mmio modules and the command, and gives COM2 to the
//! command: its stdout and stderr arrive framed (see [`Demux`]) and go to
//! kvmini's own, the command's status comes back through the debug-exit
//! port. COM1 keeps the kernel's log (`--serial`, `--serial-log`, or away).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::config::{KernelSource, SerialBackend, ShareConfig, VmConfig};

/// The init kvmini puts in the initramfs, built by build.rs.
static INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kvmini-exec-init"));

/// The tag of the host's `/`.
pub const ROOT_TAG: &str = "kvmini-root";
/// The tag of the current directory.
pub const CWD_TAG: &str = "kvmini-cwd";
/// The modules the guest needs for its root (their dependencies come
/// from modules.dep); a kernel with them built in needs none.
pub const NEEDED_MODULES: [&str; 3] = ["virtio_mmio", "9pnet_virtio", "9p"];
/// What `--exec` adds to the kernel command line.
pub const CMDLINE_EXTRA: &str = "rdinit=/init";
/// Guest RAM for `--exec` without `--memory`.
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// The init's limits (its buffers, see guest/exec-init.rs).
const MAX_COMMAND: usize = 128 * 1024 - 1;
const MAX_ENV: usize = 64 * 1024;
const MAX_MOUNTS: usize = 16 * 1024;
const MAX_PATH: usize = 4095;

/// The status the guest init gives when the command never ran.
pub const SETUP_FAILED: u8 = 125;

/// What `--exec` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecConfig {
    pub command: String,
    /// `--exec-ro`: the current directory is shared read-only too.
    pub cwd_read_only: bool,
    /// `--save-initramfs`: also write the initramfs here.
    pub save_initramfs: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--exec: no --kernel given, and the running kernel {0} cannot be read ({1}); pass --kernel PATH (a Linux bzImage with 9p and virtio-mmio, built in or as modules)")]
    NoKernel(PathBuf, io::Error),
    #[error("--exec: the command is {0} bytes; at most {MAX_COMMAND}")]
    CommandTooLong(usize),
    #[error("--exec: the command holds a NUL byte")]
    CommandNul,
    #[error("--exec: the environment is {0} bytes; at most {MAX_ENV} reach the guest (unset some variables)")]
    EnvTooLarge(usize),
    #[error("--exec: cannot tell the current directory")]
    Cwd(#[source] io::Error),
    #[error("--exec: the path {0} is too long for the guest init (at most {MAX_PATH} bytes)")]
    PathTooLong(PathBuf),
    #[error("--exec: {path}: {what}")]
    Modules {
        path: PathBuf,
        what: String,
        #[source]
        source: Option<io::Error>,
    },
    #[error("--exec: kernel {release} has no module {module} and does not have it built in (see README, Running a command: --exec)")]
    MissingModule { release: String, module: String },
    #[error("--exec: cannot build the initramfs in memory")]
    Memfd(#[source] io::Error),
    #[error("--save-initramfs {0}: cannot write the file")]
    Save(PathBuf, #[source] io::Error),
}

/// The running kernel's release (`uname -r`).
fn running_release() -> Option<String> {
    // SAFETY: utsname is plain data that uname fills in.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8(bytes).ok()
}

/// The kernel `--exec` boots without `--kernel`.
pub fn default_kernel() -> PathBuf {
    PathBuf::from(format!(
        "/boot/vmlinuz-{}",
        running_release().unwrap_or_default()
    ))
}

/// The release of a bzImage (its setup header's kernel_version string,
/// up to the first space), if `image` is one that has it.
pub fn bzimage_release(image: &[u8]) -> Option<String> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(image.get(at..at + 2)?.try_into().ok()?));
    if image.get(0x202..0x206)? != b"HdrS" || u16_at(0x206)? < 0x200 {
        return None;
    }
    let ptr = usize::from(u16_at(0x20e)?);
    if ptr == 0 {
        return None;
    }
    let text = image.get(ptr + 0x200..)?;
    let end = text.iter().take(256).position(|&b| b == 0 || b == b' ')?;
    let release = std::str::from_utf8(&text[..end]).ok()?;
    let ok = !release.is_empty()
        && release
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+~".contains(&b));
    ok.then(|| release.to_string())
}

/// The kernel's release: the running one for the default kernel, else
/// read from the bzImage's header.
fn kernel_release(kernel: &Path, default: bool) -> Option<String> {
    if default {
        return running_release();
    }
    let mut head = Vec::with_capacity(64 * 1024);
    use std::io::Read;
    File::open(kernel)
        .ok()?
        .take(64 * 1024)
        .read_to_end(&mut head)
        .ok()?;
    bzimage_release(&head)
}

/// `kernel/fs/9p/9p.ko.xz` -> `9p`; dashes count as underscores.
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.split(".ko").next().unwrap_or(base).replace('-', "_")
}

/// The module files (paths relative to the modules directory) to load for
/// `wanted`, dependencies first, from modules.dep's text; modules listed
/// in modules.builtin's text need none. Names missing from both are
/// returned as the error.
pub fn module_closure(dep: &str, builtin: &str, wanted: &[&str]) -> Result<Vec<String>, String> {
    let mut deps: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut by_name: HashMap<String, &str> = HashMap::new();
    for line in dep.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        deps.insert(path, rest.split_whitespace().collect());
        by_name.insert(module_name(path), path);
    }
    let builtin: HashSet<String> = builtin.lines().map(module_name).collect();
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    // Iterative depth-first walk: dependencies before dependants, each
    // once, whatever cycles a broken modules.dep has.
    fn visit<'a>(
        path: &'a str,
        deps: &HashMap<&'a str, Vec<&'a str>>,
        seen: &mut HashSet<&'a str>,
        order: &mut Vec<String>,
    ) {
        let mut stack = vec![(path, 0usize)];
        if !seen.insert(path) {
            return;
        }
        while let Some((p, next)) = stack.pop() {
            let list = deps.get(p).map(Vec::as_slice).unwrap_or(&[]);
            if let Some(&d) = list.get(next) {
                stack.push((p, next + 1));
                if seen.insert(d) {
                    stack.push((d, 0));
                }
            } else {
                order.push(p.to_string());
            }
        }
    }
    for want in wanted {
        match by_name.get(*want) {
            Some(path) => visit(path, &deps, &mut seen, &mut order),
            None if builtin.contains(*want) => {}
            None => return Err(want.to_string()),
        }
    }
    Ok(order)
}

/// A newc ("070701") cpio archive, as the kernel's initramfs unpacker
/// reads it.
#[derive(Default)]
pub struct Cpio {
    bytes: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.bytes.extend_from_slice(header.as_bytes());
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, (0, 0), &[]);
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | mode, (0, 0), data);
    }

    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020_600, (major, minor), &[]);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.bytes
    }
}

/// NUL-terminated records, as the guest init reads its files.
fn records<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        out.extend_from_slice(item);
        out.push(0);
    }
    out
}

/// The guest's view of the host environment, as `KEY=VALUE` records,
/// with PWD the directory the command runs in.
fn environment(cwd: &Path) -> Vec<u8> {
    let mut vars: Vec<Vec<u8>> = std::env::vars_os()
        .filter(|(k, _)| k != "PWD" && !k.as_bytes().contains(&b'='))
        .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat())
        .filter(|kv| !kv.contains(&0))
        .collect();
    vars.push([b"PWD=", cwd.as_os_str().as_bytes()].concat());
    records(vars.iter().map(Vec::as_slice))
}

/// `tty ROWS COLS` when both stdin and stdout are terminals (the command
/// then gets ttyS1 as its terminal), else `pipe`.
fn console_mode() -> String {
    // SAFETY: isatty only queries the descriptors.
    let tty = unsafe { libc::isatty(0) == 1 && libc::isatty(1) == 1 };
    if !tty {
        return "pipe".into();
    }
    // SAFETY: winsize is plain data that TIOCGWINSZ fills in.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a winsize for TIOCGWINSZ on stdout.
    unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) };
    format!("tty {} {}", ws.ws_row, ws.ws_col)
}

/// A share's place in the guest: its tag, its path, ro or rw.
struct Mount {
    tag: String,
    path: PathBuf,
    read_only: bool,
}

/// What [`prepare`] turned the configuration into.
pub struct Prepared {
    pub config: VmConfig,
    /// The initramfs, in an anonymous memory file.
    pub initramfs: File,
}

/// Turns an `--exec` configuration into the VM that runs it: the kernel,
/// the shares (host `/`, the current directory, the user's), COM2 and
/// the initramfs. Touches only the host files it reads.
pub fn prepare(config: &VmConfig, exec: &ExecConfig) -> Result<Prepared, Error> {
    if exec.command.len() > MAX_COMMAND {
        return Err(Error::CommandTooLong(exec.command.len()));
    }
    if exec.command.contains('\0') {
        return Err(Error::CommandNul);
    }
    let mut config = config.clone();
    config.exec = None;
    let is_default = matches!(config.kernel, KernelSource::Embedded);
    let kernel = match &config.kernel {
        KernelSource::File(p) => p.clone(),
        KernelSource::Embedded => {
            let p = default_kernel();
            if let Err(e) = File::open(&p) {
                return Err(Error::NoKernel(p, e));
            }
            p
        }
    };
    config.kernel = KernelSource::File(kernel.clone());

    let cwd = std::env::current_dir().map_err(Error::Cwd)?;
    let mut mounts = Vec::new();
    if cwd != Path::new("/") {
        mounts.push(Mount {
            tag: CWD_TAG.into(),
            path: cwd.clone(),
            read_only: exec.cwd_read_only,
        });
    }
    let mut shares = vec![ShareConfig {
        path: "/".into(),
        tag: Some(ROOT_TAG.into()),
        read_only: true,
    }];
    if let Some(m) = mounts.first() {
        shares.push(ShareConfig {
            path: m.path.clone(),
            tag: Some(m.tag.clone()),
            read_only: m.read_only,
        });
    }
    for (i, s) in config.shares.iter().enumerate() {
        let tag = s.tag_at(i);
        let path = std::path::absolute(&s.path).unwrap_or_else(|_| s.path.clone());
        mounts.push(Mount {
            tag: tag.clone(),
            path,
            read_only: s.read_only,
        });
        shares.push(ShareConfig {
            path: s.path.clone(),
            tag: Some(tag),
            read_only: s.read_only,
        });
    }
    config.shares = shares;
    for m in &mounts {
        if m.path.as_os_str().len() > MAX_PATH {
            return Err(Error::PathTooLong(m.path.clone()));
        }
    }

    let mode = console_mode();
    let interactive = mode.starts_with("tty");
    config.serial2 = Some(if interactive {
        SerialBackend::Stdio
    } else {
        SerialBackend::ExecStreams
    });

    let env = environment(&cwd);
    if env.len() > MAX_ENV {
        return Err(Error::EnvTooLarge(env.len()));
    }
    let mount_records: Vec<Vec<u8>> = mounts
        .iter()
        .flat_map(|m| {
            [
                m.tag.as_bytes().to_vec(),
                m.path.as_os_str().as_bytes().to_vec(),
                if m.read_only {
                    b"ro".to_vec()
                } else {
                    b"rw".to_vec()
                },
            ]
        })
        .collect();
    let mount_file = records(mount_records.iter().map(Vec::as_slice));
    if mount_file.len() > MAX_MOUNTS {
        return Err(Error::PathTooLong(cwd));
    }

    let mut cpio = Cpio::default();
    for d in [".", "dev", "proc", "sys", "newroot", "kvmini", "modules"] {
        cpio.dir(d);
    }
    cpio.char_dev("dev/console", 5, 1);
    cpio.char_dev("dev/ttyS1", 4, 65);
    cpio.char_dev("dev/null", 1, 3);
    cpio.file("init", 0o755, INIT);
    cpio.file("kvmini/mode", 0o644, mode.as_bytes());
    cpio.file("kvmini/cmd", 0o644, &records([exec.command.as_bytes()]));
    cpio.file("kvmini/env", 0o644, &env);
    cpio.file("kvmini/cwd", 0o644, &records([cwd.as_os_str().as_bytes()]));
    cpio.file("kvmini/mounts", 0o644, &mount_file);
    let modules = kernel_release(&kernel, is_default)
        .map(|release| add_modules(&mut cpio, &release))
        .transpose()?
        .unwrap_or_default();
    cpio.file("kvmini/modules", 0o644, &modules);
    let image = cpio.finish();

    if let Some(p) = &exec.save_initramfs {
        std::fs::write(p, &image).map_err(|e| Error::Save(p.clone(), e))?;
    }
    let initramfs = memfd(&image).map_err(Error::Memfd)?;
    log::info!(
        "--exec: initramfs of {} bytes, shares {:?}",
        image.len(),
        config.shares.iter().map(|s| &s.path).collect::<Vec<_>>()
    );
    Ok(Prepared { config, initramfs })
}

/// Adds the modules of [`NEEDED_MODULES`] for kernel `release` from
/// /lib/modules; returns the init's list of them. A kernel whose modules
/// are not installed gets none (it may have everything built in; the
/// init says what is missing if not).
fn add_modules(cpio: &mut Cpio, release: &str) -> Result<Vec<u8>, Error> {
    let dir = Path::new("/lib/modules").join(release);
    let dep_path = dir.join("modules.dep");
    let dep = match std::fs::read_to_string(&dep_path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            log::warn!(
                "--exec: {} is missing: no modules for kernel {release} (it needs 9p and virtio-mmio built in)",
                dep_path.display()
            );
            return Ok(Vec::new());
        }
        Err(e) => {
            return Err(Error::Modules {
                path: dep_path,
                what: "cannot read it".into(),
                source: Some(e),
            })
        }
    };
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let order =
        module_closure(&dep, &builtin, &NEEDED_MODULES).map_err(|module| Error::MissingModule {
            release: release.into(),
            module,
        })?;
    let mut list = Vec::new();
    for (i, rel) in order.iter().enumerate() {
        let path = dir.join(rel);
        let data = std::fs::read(&path).map_err(|e| Error::Modules {
            path: path.clone(),
            what: "cannot read the module".into(),
            source: Some(e),
        })?;
        let base = rel.rsplit('/').next().unwrap_or(rel);
        let name = format!("modules/{i:02}-{base}");
        cpio.file(&name, 0o644, &data);
        list.extend_from_slice(b"/");
        list.extend_from_slice(name.as_bytes());
        list.push(0);
    }
    log::info!("--exec: modules for {release}: {order:?}");
    Ok(list)
}

/// `bytes` in an anonymous memory file, read from its start.
fn memfd(bytes: &[u8]) -> io::Result<File> {
    use std::io::{Seek, SeekFrom};
    use std::os::fd::FromRawFd;
    // SAFETY: a NUL-terminated name; returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"kvmini-exec-initramfs".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(bytes)?;
    f.seek(SeekFrom::Start(0))?;
    Ok(f)
}

/// The framing of the guest init's pipe mode: DLE 'o' switches to stdout,
/// DLE 'e' to stderr, DLE DLE is one DLE of the current stream; any other
/// byte after DLE is dropped (the guest wrote something kvmini does not
/// know). Output starts on stdout.
pub const DLE: u8 = 0x10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stream {
    #[default]
    Stdout,
    Stderr,
}

/// Splits COM2's framed bytes into the command's two streams, a byte at a
/// time if it must: its state survives any split of the input.
#[derive(Debug, Default)]
pub struct Demux {
    pub current: Stream,
    escaped: bool,
}

/// One step of [`Demux::next`]: bytes for a stream, or a control byte
/// consumed.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The first `len` bytes of the input belong to `stream` (for a
    /// literal DLE: the input's DLE itself, len 1).
    Data(Stream, usize),
    /// The first `len` bytes were framing, now consumed.
    Control(usize),
}

impl Demux {
    /// What the start of `buf` is. The caller writes the data (or as much
    /// of it as it can) and calls [`Demux::consumed`] for what it took.
    pub fn next(&self, buf: &[u8]) -> Option<Step> {
        let &first = buf.first()?;
        if self.escaped {
            return Some(match first {
                DLE => Step::Data(self.current, 1),
                _ => Step::Control(1),
            });
        }
        if first == DLE {
            return Some(Step::Control(1));
        }
        let len = buf.iter().position(|&b| b == DLE).unwrap_or(buf.len());
        Some(Step::Data(self.current, len))
    }

    /// Takes note that the first `n` bytes of what [`Demux::next`] looked
    /// at are done with (for Data, n may be less than its length).
    pub fn consumed(&mut self, buf: &[u8], n: usize) {
        if n == 0 {
            return;
        }
        if self.escaped {
            self.escaped = false;
            match buf[0] {
                b'o' => self.current = Stream::Stdout,
                b'e' => self.current = Stream::Stderr,
                _ => {}
            }
        } else if buf[0] == DLE {
            self.escaped = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the demux over `input` split at every `chunk` bytes, taking at
    /// most `take` bytes of data at a time as a slow writer would.
    fn demux(input: &[u8], chunk: usize, take: usize) -> (Vec<u8>, Vec<u8>) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut d = Demux::default();
        for piece in input.chunks(chunk) {
            let mut at = 0;
            while let Some(step) = d.next(&piece[at..]) {
                let n = match step {
                    Step::Control(n) => n,
                    Step::Data(s, len) => {
                        let n = len.min(take);
                        let target = if s == Stream::Stdout {
                            &mut out
                        } else {
                            &mut err
                        };
                        target.extend_from_slice(&piece[at..at + n]);
                        n
                    }
                };
                d.consumed(&piece[at..], n);
                at += n;
            }
        }
        (out, err)
    }

    #[test]
    fn demux_splits_streams_at_any_boundary() {
        let input = b"out1\x10eerr1\x10\x10x\x10oout2\x10\x10\x10eerr2\x10zq";
        for chunk in 1..=input.len() {
            for take in 1..5 {
                let (out, err) = demux(input, chunk, take);
                assert_eq!(out, b"out1out2\x10", "chunk {chunk} take {take}");
                assert_eq!(err, b"err1\x10xerr2q", "chunk {chunk} take {take}");
            }
        }
    }

    #[test]
    fn cpio_is_newc_with_aligned_entries_and_a_trailer() {
        let mut c = Cpio::default();
        c.dir(".");
        c.file("init", 0o755, b"abcde");
        c.char_dev("dev/console", 5, 1);
        let bytes = c.finish();
        assert_eq!(&bytes[..6], b"070701");
        assert!(bytes.len().is_multiple_of(4));
        // Second entry: "init", 5 bytes of data after its padded name.
        let second = &bytes[112..];
        assert_eq!(&second[..6], b"070701");
        let field = |e: &[u8], i: usize| {
            u32::from_str_radix(std::str::from_utf8(&e[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                .unwrap()
        };
        assert_eq!(field(second, 1), 0o100_755);
        assert_eq!(field(second, 6), 5);
        assert_eq!(field(second, 11), 5); // "init" and its NUL
        let name_end: usize = 110 + 5;
        let data_at = name_end.div_ceil(4) * 4;
        assert_eq!(&second[110..114], b"init");
        assert_eq!(&second[data_at..data_at + 5], b"abcde");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("dev/console"));
        assert!(text.contains("TRAILER!!!"));
        let console = text.find("dev/console").unwrap() - 110;
        assert_eq!(field(&bytes[console..], 1), 0o020_600);
        assert_eq!(field(&bytes[console..], 9), 5);
        assert_eq!(field(&bytes[console..], 10), 1);
    }

    #[test]
    fn module_closure_orders_dependencies_first_and_skips_builtins() {
        let dep = "kernel/fs/9p/9p.ko.xz: kernel/fs/netfs/netfs.ko.xz kernel/net/9p/9pnet.ko.xz\n\
                   kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz\n\
                   kernel/net/9p/9pnet.ko.xz:\n\
                   kernel/fs/netfs/netfs.ko.xz: kernel/fs/fscache/fscache.ko.xz\n\
                   kernel/fs/fscache/fscache.ko.xz: kernel/fs/netfs/netfs.ko.xz\n";
        let builtin = "kernel/drivers/virtio/virtio_mmio.ko\n";
        let order = module_closure(dep, builtin, &NEEDED_MODULES).unwrap();
        let pos = |m: &str| order.iter().position(|p| p.contains(m)).unwrap();
        assert_eq!(order.len(), 5, "{order:?}");
        assert!(pos("9pnet.ko") < pos("9pnet_virtio"));
        assert!(pos("9pnet.ko") < pos("/9p.ko"));
        assert!(pos("netfs") < pos("/9p.ko"));
        assert_eq!(
            module_closure(dep, "", &NEEDED_MODULES),
            Err("virtio_mmio".to_string())
        );
    }

    #[test]
    fn release_comes_from_the_bzimage_header() {
        let mut image = vec![0u8; 0x1000];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        image[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        let v = b"6.1.0-27-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
        image[0x500..0x500 + v.len()].copy_from_slice(v);
        assert_eq!(bzimage_release(&image).as_deref(), Some("6.1.0-27-amd64"));
        image[0x500] = b'/';
        assert_eq!(bzimage_release(&image), None);
        image[0x202] = b'X';
        assert_eq!(bzimage_release(&image), None);
        assert_eq!(bzimage_release(&[]), None);
    }
}
