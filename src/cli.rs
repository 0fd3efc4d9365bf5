//! The command line: clap types and their conversion into a [`VmConfig`].
//! Pure; unit-tested without KVM.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};

use crate::loader::ModuleConfig;

use crate::config::{
    BootProtocol, DiskConfig, IrqchipMode, KernelSource, RebootPolicy, SerialBackend, ShareConfig,
    VmConfig, DEFAULT_GUEST_CMDLINE, DEFAULT_LINUX_CMDLINE, MAX_CPUS,
};

const EXAMPLES: &str = "\
Examples:
  kvmini                                   boot the built-in tiny guest
  kvmini --cmdline 'exit=3'; echo $?       the guest's status becomes kvmini's (3)
  kvmini --kernel bzImage --initramfs initrd.cpio --memory 512M --cpus 2
  kvmini --kernel vmlinux --serial file=console.log --timeout 60s

Console: Ctrl-A x (or X) quits, Ctrl-A Ctrl-A sends Ctrl-A.";

/// The text after the flags: examples, then the exit-status table from
/// [`crate::status::TABLE`] (so --help cannot lose a status).
fn after_help() -> String {
    format!("{EXAMPLES}\n\n{}", crate::status::help_text())
}

#[derive(Debug, Parser)]
#[command(
    name = "kvmini",
    version,
    about = "A minimal hypervisor on KVM: boots a kernel with a serial console and \
             reports how the guest ended in its exit status.",
    after_help = after_help()
)]
pub struct Args {
    /// Kernel to boot: a 64-bit ELF (vmlinux, PVH), a bzImage, or a
    /// multiboot kernel (ELF32, ELF64 or a.out kludge, e.g. kvm-unit-tests'
    /// x86/*.flat), detected by content. Default: kvmini's built-in tiny
    /// guest.
    /// Example: --kernel /boot/vmlinuz-6.1.0-amd64
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Initramfs (cpio archive, optionally compressed) handed to the kernel.
    /// Example: --initramfs initrd.cpio.gz
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,

    /// A module for a multiboot kernel, after the --initramfs (which is the
    /// first module): its path and, after a comma, words the kernel gets
    /// with it (its string is "PATH WORDS", as GRUB and QEMU give). May be
    /// given several times.
    /// Example: --module env.txt --module data.bin,name=data
    #[arg(long, value_name = "PATH[,CMDLINE]", value_parser = parse_module)]
    pub module: Vec<ModuleConfig>,

    /// Kernel command line. Default: "hello" for the built-in guest, and
    /// for other kernels the value shown below.
    /// Example: --cmdline 'console=ttyS0 quiet'
    #[arg(long, value_name = "STRING", long_help = cmdline_help())]
    pub cmdline: Option<String>,

    /// Add to the kernel command line (the default one, or --cmdline's),
    /// as QEMU's -append adds to its own: the default keeps its serial
    /// console and its reboot on panic.
    /// Example: --append 'init=/bin/sh'
    #[arg(long, value_name = "STRING")]
    pub append: Option<String>,

    /// Guest RAM, in bytes or with a K, M, G or T suffix (powers of 1024).
    /// Example: --memory 512M
    /// Default 128M (512M with --exec).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory: Option<u64>,

    /// Number of vCPUs, 1 to 64.
    /// Example: --cpus 2
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_cpus)]
    pub cpus: u8,

    /// COM1's back end: stdio, file=PATH (output only), null, pty (a new
    /// pseudo-terminal, its path printed on stderr) or socket=PATH (a Unix
    /// socket server; output made while no client is connected is replayed,
    /// up to 64 KiB, to the next one). `pty,wait` and `socket=PATH,wait`
    /// hold the guest until the first client attaches (--timeout counts).
    /// Example: --serial socket=/tmp/vm.sock,wait
    /// Default stdio (null with --exec: the kernel's log goes away).
    #[arg(long, value_name = "BACKEND", value_parser = parse_serial_arg)]
    pub serial: Option<SerialArg>,

    /// Adds COM2 (port 0x2f8, IRQ 3, Linux's ttyS1) with this back end; same
    /// choices as --serial.
    /// Example: --serial2 file=results.txt
    #[arg(long, value_name = "BACKEND", value_parser = parse_serial_arg)]
    pub serial2: Option<SerialArg>,

    /// A raw disk image for the guest, as a virtio-blk device (virtio-mmio,
    /// described in the ACPI DSDT): the first is /dev/vda, the next
    /// /dev/vdb, ... Options after commas: `ro` (read-only), `serial=ID`
    /// (at most 20 bytes; /dev/disk/by-id). The image's size must be a
    /// multiple of 512 bytes; kvmini locks it (exclusively unless `ro`).
    /// May be given several times.
    /// Example: --disk rootfs.ext4 --disk data.img,ro
    #[arg(long, value_name = "PATH[,ro][,serial=ID]", value_parser = parse_disk)]
    pub disk: Vec<DiskConfig>,

    /// A host directory for the guest, as a virtio-9p device (9P2000.L,
    /// virtio-mmio, described in the ACPI DSDT), mounted in Linux with
    /// `mount -t 9p -o trans=virtio,version=9p2000.L TAG /mnt`. Options
    /// after commas: `tag=TAG` (1 to 31 printable ASCII characters, no
    /// commas; default share0, share1, ... in the order given) and `ro`
    /// (kvmini refuses every change). The guest stays inside HOSTDIR: `..`
    /// of the top is the top, symlinks are never followed. It acts with
    /// kvmini's user's permissions. May be given several times.
    /// Example: --share ./src,tag=src,ro
    #[arg(long, value_name = "HOSTDIR[,tag=TAG][,ro]", value_parser = parse_share)]
    pub share: Vec<ShareConfig>,

    /// Boot the kernel (--kernel; default: the running kernel,
    /// /boot/vmlinuz-$(uname -r)) on the host's own files and run COMMAND
    /// in it with /bin/sh: the host's / read-only as the guest's root,
    /// tmpfs on /tmp, /run and /var/tmp, the current directory at its own
    /// path (writable unless --exec-ro) and every --share at its host path.
    /// COMMAND's output is kvmini's stdout and stderr, its exit status
    /// kvmini's (125: the guest init could not run it); the kernel's log
    /// goes to --serial/--serial-log, by default nowhere. With a terminal
    /// on stdin and stdout the command gets a terminal (`--exec sh`);
    /// without one its stdin is /dev/null.
    /// Example: --exec 'uname -r; make -C tools/testing/selftests run_tests'
    #[arg(long, value_name = "COMMAND", conflicts_with_all = ["initramfs", "module", "cmdline", "serial2", "input", "input_after", "debug_exit_status"])]
    pub exec: Option<String>,

    /// With --exec: share the current directory read-only.
    #[arg(long, requires = "exec")]
    pub exec_ro: bool,

    /// With --exec: also write the initramfs kvmini builds to PATH (to look
    /// inside it, or to boot it elsewhere).
    #[arg(long, value_name = "PATH", requires = "exec")]
    pub save_initramfs: Option<PathBuf>,

    /// Also copy everything COM1 prints into this file.
    /// Example: --serial-log console.log
    #[arg(long, value_name = "PATH")]
    pub serial_log: Option<PathBuf>,

    /// Prefix each line of --serial-log with the seconds since kvmini
    /// started, e.g. "[   0.012345] ".
    #[arg(long, requires = "serial_log")]
    pub serial_timestamps: bool,

    /// End the VM with status 0 as soon as COM1's output matches this
    /// regular expression (may span lines). May be given several times.
    /// Example: --until 'ALL TESTS PASSED'
    #[arg(long, value_name = "REGEX")]
    pub until: Vec<String>,

    /// End the VM with status 7 as soon as COM1's output matches this
    /// regular expression. May be given several times.
    /// Example: --fail-on 'Kernel panic|FAILED'
    #[arg(long, value_name = "REGEX")]
    pub fail_on: Vec<String>,

    /// Read COM1's output as a KTAP report (kunit, or TAP 13 from
    /// kselftest), nested subtests included: the VM ends with status 0 when
    /// the top-level plan completes with no failure, 7 at the first
    /// top-level "not ok" (or when the guest shuts down before the plan
    /// completes); a panic, a crash or --timeout keep their own status.
    /// Prints "ktap: N passed, N failed, N skipped" at the end.
    #[arg(long)]
    pub ktap: bool,

    /// With --ktap: a top-level failure does not end the VM; the verdict
    /// (7 if any top-level test failed) comes when the plan completes.
    #[arg(long, requires = "ktap")]
    pub ktap_keep_going: bool,

    /// With --ktap: write the report as JUnit XML to this file at the end
    /// (one testcase per test; a failure's diagnostic lines are its
    /// message; a report cut short adds an erroring testcase saying how).
    /// Example: --junit results.xml
    #[arg(long, value_name = "FILE", requires = "ktap")]
    pub junit: Option<PathBuf>,

    /// How a write of N to the debug-exit port 0xf4 becomes kvmini's exit
    /// status: `verbatim` (N itself) or `qemu` ((N << 1) | 1, as QEMU's
    /// isa-debug-exit gives: harnesses written for QEMU, such as Rust OS
    /// test runners expecting 33 for success, work unchanged).
    #[arg(long, value_enum, value_name = "RULE", default_value_t = DebugExitStatus::Verbatim)]
    pub debug_exit_status: DebugExitStatus,

    /// Serve a gdb remote stub on a Unix socket path or tcp:[HOST]:PORT
    /// (HOST defaults to 127.0.0.1; the stub is unauthenticated: anyone who
    /// can connect controls the guest). The guest is held before its first
    /// instruction until gdb attaches; `,nowait` lets it run, and gdb stops
    /// it when it attaches. Every vCPU is a gdb thread; all stop together.
    /// Example: --gdb tcp::1234 (then gdb: target remote :1234)
    #[arg(long, value_name = "ADDR[,nowait]", value_parser = crate::gdb::parse)]
    pub gdb: Option<crate::gdb::GdbConfig>,

    /// Type the bytes of this file into COM1, as soon as the guest reads
    /// (or, with --input-after, once the output matches).
    /// Example: --input commands.txt
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,

    /// Hold --input back until COM1's output matches this regular
    /// expression, e.g. a shell prompt.
    /// Example: --input-after '# $'
    #[arg(long, value_name = "REGEX", requires = "input")]
    pub input_after: Option<String>,

    /// Print a boot timeline on stderr at exit: process start, VM ready,
    /// first guest exit, first serial byte, each POST code written to port
    /// 0x80, and the end.
    #[arg(long)]
    pub boot_trace: bool,

    /// KVM's in-kernel interrupt controllers and PIT: on, off, or auto (on
    /// for every kernel except the built-in tiny guest on one vCPU, which
    /// polls and starts faster without them). Without them a guest that
    /// halts cannot be woken, and kvmini ends it as crashed (status 4).
    /// Example: --irqchip on
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub irqchip: Irqchip,

    /// Do not confine kvmini's threads with seccomp filters.
    #[arg(long)]
    pub no_seccomp: bool,

    /// Stop the guest after this long (status 5). Units: ms, s, m, h; a bare
    /// number is seconds.
    /// Example: --timeout 30s
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// What a guest reboot does: exit (kvmini exits 0) or restart (boot the
    /// guest again in place).
    /// Example: --on-reboot restart
    #[arg(long, value_name = "POLICY", default_value = "exit")]
    pub on_reboot: OnReboot,

    /// Entry point for ELF kernels: linux (the 64-bit boot protocol, at the
    /// ELF entry) or pvh (the 32-bit entry in the kernel's PVH note); or
    /// multiboot, for a kernel that must be a multiboot one (the built-in
    /// tiny guest then boots its multiboot build). A kernel with a multiboot
    /// header is always entered as multiboot.
    /// Example: --boot pvh
    #[arg(long, value_name = "PROTOCOL", default_value = "linux")]
    pub boot: Boot,

    /// More log output on stderr (-v info, -vv debug, -vvv trace). RUST_LOG
    /// overrides it. Example: -vv
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,
}

/// The built-in tiny guest's modes, as --help lists them (the README's
/// table says what each does; a test checks the two name the same modes).
pub const TINY_GUEST_MODES: &str =
    "hello, exit=N [exit-width=1|2|4], echo, loopback, flood=N [seed=S] \
    [then-spin], fault, pagetable, spin, halt, com2, reboot, fresh, poweroff, panic, post, \
    blk, p9, mbinfo, debug=N, chaos=SEED [ops=N], ktap=SPEC [tap13] [stamp] [ktap-end=WORD]";

fn cmdline_help() -> String {
    format!(
        "Kernel command line. Default: \"hello\" for the built-in guest; for other \
         kernels \"{DEFAULT_LINUX_CMDLINE}\" (serial console, reboot through the \
         keyboard controller, reboot on panic, which kvmini reports as a panic). \
         --append adds to it instead of replacing it.\n\
         The built-in guest's modes (the first mode word wins): {TINY_GUEST_MODES}.\n\
         Example: --cmdline 'console=ttyS0 quiet', --cmdline echo"
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DebugExitStatus {
    Verbatim,
    Qemu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnReboot {
    Exit,
    Restart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Irqchip {
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Boot {
    Linux,
    Pvh,
    Multiboot,
}

/// `--module PATH[,CMDLINE]`.
fn parse_module(s: &str) -> Result<ModuleConfig, String> {
    let (path, cmdline) = match s.split_once(',') {
        Some((p, c)) => (p, Some(c.to_string())),
        None => (s, None),
    };
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    if let Some(c) = &cmdline {
        if let Some(bad) = c.bytes().find(|b| !(0x20..0x7f).contains(b)) {
            return Err(format!(
                "its string may hold printable ASCII only, not byte {bad:#04x}"
            ));
        }
    }
    Ok(ModuleConfig {
        path: path.into(),
        cmdline,
    })
}

/// Parses "128M", "1G", "65536", "512k", "2GiB".
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let body = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (digits, shift) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 10),
        Some('m') => (&body[..body.len() - 1], 20),
        Some('g') => (&body[..body.len() - 1], 30),
        Some('t') => (&body[..body.len() - 1], 40),
        _ => (body, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "'{s}' is not a size (use a number with an optional K, M, G or T suffix, e.g. 512M)"
        ));
    }
    let n: u64 = digits.parse().map_err(|_| format!("'{s}' is too large"))?;
    if n == 0 {
        return Err("the size must be greater than zero".into());
    }
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Parses "30s", "500ms", "2m", "1h", "1.5s", "10".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 30s, 500ms, 2m)"))?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use ms, s, m or h)")),
    };
    let secs = value * scale;
    if !secs.is_finite() || secs <= 0.0 {
        return Err("the duration must be greater than zero".into());
    }
    // Deadlines are instants on the monotonic clock: beyond this they
    // would not fit (and no guest waits a century).
    const MAX_SECS: f64 = 100.0 * 365.0 * 86400.0;
    if secs > MAX_SECS {
        return Err(format!("'{s}' is too long (at most 100 years)"));
    }
    match Duration::try_from_secs_f64(secs) {
        // Below a nanosecond rounds to nothing: as bad as zero.
        Ok(d) if d.is_zero() => Err("the duration must be greater than zero".into()),
        Ok(d) => Ok(d),
        Err(_) => Err(format!("'{s}' is too long")),
    }
}

fn parse_cpus(s: &str) -> Result<u8, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    if n == 0 || n > u32::from(MAX_CPUS) {
        return Err(format!("{n} is out of range (1 to {MAX_CPUS})"));
    }
    Ok(n as u8)
}

/// Parses "stdio", "null", "pty", "file=PATH", "socket=PATH".
pub fn parse_serial(s: &str) -> Result<SerialBackend, String> {
    let path = |kind: &str, p: &str| {
        if p.is_empty() {
            Err(format!("{kind}= needs a path"))
        } else {
            Ok(PathBuf::from(p))
        }
    };
    match s {
        "stdio" => Ok(SerialBackend::Stdio),
        "null" => Ok(SerialBackend::Null),
        "pty" => Ok(SerialBackend::Pty),
        _ => {
            if let Some(p) = s.strip_prefix("file=") {
                path("file", p).map(SerialBackend::File)
            } else if let Some(p) = s.strip_prefix("socket=") {
                path("socket", p).map(SerialBackend::Socket)
            } else {
                Err(format!(
                    "'{s}' is not a back end (use stdio, file=PATH, null, pty or socket=PATH)"
                ))
            }
        }
    }
}

/// A --serial/--serial2 value: the back end, and whether the guest waits
/// for its first client.
#[derive(Debug, Clone, PartialEq)]
pub struct SerialArg {
    pub backend: SerialBackend,
    pub wait: bool,
}

/// Parses a back end with an optional ",wait" (pty and socket only).
pub fn parse_serial_arg(s: &str) -> Result<SerialArg, String> {
    match s.strip_suffix(",wait") {
        Some(b) => {
            let backend = parse_serial(b)?;
            if !matches!(backend, SerialBackend::Pty | SerialBackend::Socket(_)) {
                return Err(format!(
                    "',wait' holds the guest until a client attaches: only pty and \
                     socket=PATH have clients, not '{b}'"
                ));
            }
            Ok(SerialArg {
                backend,
                wait: true,
            })
        }
        None => Ok(SerialArg {
            backend: parse_serial(s)?,
            wait: false,
        }),
    }
}

/// Parses "PATH", "PATH,ro", "PATH,serial=ID,ro".
pub fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    let mut parts = s.split(',');
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err("needs a path (PATH[,ro][,serial=ID])".into());
    }
    let mut disk = DiskConfig {
        path: PathBuf::from(path),
        read_only: false,
        serial: String::new(),
    };
    for opt in parts {
        if opt == "ro" {
            disk.read_only = true;
        } else if let Some(id) = opt.strip_prefix("serial=") {
            if id.len() > 20 || !id.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "serial={id}: at most 20 printable ASCII characters, no spaces"
                ));
            }
            disk.serial = id.to_string();
        } else {
            return Err(format!("unknown option '{opt}' (use ro or serial=ID)"));
        }
    }
    Ok(disk)
}

/// Parses "HOSTDIR", "HOSTDIR,ro", "HOSTDIR,tag=TAG,ro".
pub fn parse_share(s: &str) -> Result<ShareConfig, String> {
    let mut parts = s.split(',');
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err("needs a directory (HOSTDIR[,tag=TAG][,ro])".into());
    }
    let mut share = ShareConfig {
        path: PathBuf::from(path),
        tag: None,
        read_only: false,
    };
    for opt in parts {
        if opt == "ro" {
            share.read_only = true;
        } else if let Some(tag) = opt.strip_prefix("tag=") {
            crate::devices::virtio::p9::check_tag(tag)
                .map_err(|why| format!("tag={tag}: {why}"))?;
            if share.tag.is_some() {
                return Err("tag= is given twice".into());
            }
            share.tag = Some(tag.to_string());
        } else {
            return Err(format!("unknown option '{opt}' (use ro or tag=TAG)"));
        }
    }
    Ok(share)
}

impl Args {
    pub fn into_config(self) -> VmConfig {
        let has_kernel = self.kernel.is_some() || self.exec.is_some();
        let exec = self.exec.map(|command| crate::exec::ExecConfig {
            command,
            cwd_read_only: self.exec_ro,
            save_initramfs: self.save_initramfs,
        });
        // --exec: the kernel's log goes away unless the user sends it
        // somewhere, and then is not shortened to errors by `quiet`.
        let quiet = exec.is_some() && self.serial.is_none() && self.serial_log.is_none();
        let serial = self.serial.unwrap_or(SerialArg {
            backend: if exec.is_some() {
                SerialBackend::Null
            } else {
                SerialBackend::Stdio
            },
            wait: false,
        });
        let exec_extra = exec.as_ref().map(|_| {
            let mut extra = crate::exec::CMDLINE_EXTRA.to_string();
            if quiet {
                extra.push_str(" quiet");
            }
            extra
        });
        VmConfig {
            kernel: self
                .kernel
                .map_or(KernelSource::Embedded, KernelSource::File),
            boot: match self.boot {
                Boot::Linux => BootProtocol::Linux64,
                Boot::Pvh => BootProtocol::Pvh,
                Boot::Multiboot => BootProtocol::Multiboot,
            },
            initramfs: self.initramfs,
            modules: self.module,
            cmdline: match (self.append, exec_extra) {
                (None, Some(extra)) => Some(format!("{DEFAULT_LINUX_CMDLINE} {extra}")),
                (Some(more), Some(extra)) => {
                    Some(format!("{DEFAULT_LINUX_CMDLINE} {extra} {more}"))
                }
                (None, None) => self.cmdline,
                (Some(more), None) => {
                    let base = self.cmdline.unwrap_or_else(|| {
                        if has_kernel {
                            DEFAULT_LINUX_CMDLINE
                        } else {
                            DEFAULT_GUEST_CMDLINE
                        }
                        .to_string()
                    });
                    Some(format!("{base} {more}"))
                }
            },
            memory: self.memory.unwrap_or(if exec.is_some() {
                crate::exec::DEFAULT_MEMORY
            } else {
                crate::config::DEFAULT_MEMORY
            }),
            cpus: self.cpus,
            serial: serial.backend,
            serial_wait: serial.wait,
            serial2_wait: self.serial2.as_ref().is_some_and(|s| s.wait),
            serial2: self.serial2.map(|s| s.backend),
            serial_log: self.serial_log,
            serial_timestamps: self.serial_timestamps,
            until: self.until,
            fail_on: self.fail_on,
            ktap: self.ktap,
            ktap_keep_going: self.ktap_keep_going,
            junit: self.junit,
            debug_exit: match self.debug_exit_status {
                DebugExitStatus::Verbatim => crate::devices::debug_exit::ExitRule::Verbatim,
                DebugExitStatus::Qemu => crate::devices::debug_exit::ExitRule::Qemu,
            },
            input: self.input,
            input_after: self.input_after,
            gdb: self.gdb,
            boot_trace: self.boot_trace,
            seccomp: !self.no_seccomp,
            irqchip: match self.irqchip {
                Irqchip::Auto => IrqchipMode::Auto,
                Irqchip::On => IrqchipMode::On,
                Irqchip::Off => IrqchipMode::Off,
            },
            timeout: self.timeout,
            disks: self.disk,
            shares: self.share,
            exec,
            on_reboot: match self.on_reboot {
                OnReboot::Exit => RebootPolicy::Exit,
                OnReboot::Restart => RebootPolicy::Restart,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<VmConfig, clap::Error> {
        let mut v = vec!["kvmini"];
        v.extend_from_slice(args);
        Args::try_parse_from(v).map(Args::into_config)
    }

    #[test]
    fn append_adds_to_the_default_or_given_command_line() {
        let c = parse(&["--kernel", "/k", "--append", "init=/bin/sh"]).unwrap();
        assert_eq!(
            c.effective_cmdline(),
            format!("{DEFAULT_LINUX_CMDLINE} init=/bin/sh")
        );
        assert!(c.effective_cmdline().contains("console=ttyS0"));
        assert!(c.effective_cmdline().contains("panic=-1"));
        let c = parse(&["--append", "seed=3"]).unwrap();
        assert_eq!(c.effective_cmdline(), "hello seed=3");
        let c = parse(&["--cmdline", "flood=10", "--append", "seed=3"]).unwrap();
        assert_eq!(c.effective_cmdline(), "flood=10 seed=3");
    }

    #[test]
    fn help_lists_the_tiny_guests_modes_as_the_readme_does() {
        // The README's table of modes: its rows' first column.
        let readme = include_str!("../README.md");
        let table = readme
            .split("| mode | what it does |")
            .nth(1)
            .expect("the README's tiny guest table");
        let readme_modes: Vec<String> = table
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cell = l.split('|').nth(1).unwrap_or("").trim();
                let word = cell
                    .trim_matches('`')
                    .split([' ', '`', '='])
                    .next()
                    .unwrap_or("");
                word.to_string()
            })
            .collect();
        let help_modes: Vec<String> = TINY_GUEST_MODES
            .split(", ")
            .map(|m| m.split([' ', '=']).next().unwrap_or("").to_string())
            .collect();
        let mut a = readme_modes.clone();
        let mut b = help_modes.clone();
        a.sort();
        b.sort();
        assert_eq!(a, b, "README modes vs --help modes");
        let help = {
            use clap::CommandFactory;
            Args::command().render_long_help().to_string()
        };
        assert!(help.contains("loopback, flood=N"), "{help}");
    }

    #[test]
    fn no_arguments_is_the_default_config() {
        assert_eq!(parse(&[]).unwrap(), VmConfig::default());
    }

    #[test]
    fn every_flag_reaches_the_config() {
        let c = parse(&[
            "--kernel",
            "/k",
            "--initramfs",
            "/i",
            "--cmdline",
            "a b",
            "--memory",
            "1G",
            "--cpus",
            "4",
            "--serial",
            "file=/tmp/x",
            "--timeout",
            "1.5s",
            "--on-reboot",
            "restart",
            "--boot",
            "pvh",
            "--serial2",
            "socket=/tmp/s",
            "--serial-log",
            "/tmp/log",
            "--serial-timestamps",
            "--until",
            "a",
            "--until",
            "b",
            "--fail-on",
            "c",
            "--input",
            "/tmp/in",
            "--input-after",
            "d",
            "--boot-trace",
            "--no-seccomp",
            "--irqchip",
            "off",
            "--disk",
            "/d1",
            "--disk",
            "/d2,serial=abc,ro",
        ])
        .unwrap();
        assert_eq!(c.disks.len(), 2);
        assert_eq!(
            (c.disks[0].path.to_str(), c.disks[0].read_only),
            (Some("/d1"), false)
        );
        assert_eq!(c.disks[1].serial, "abc");
        assert!(c.disks[1].read_only);
        assert_eq!(c.serial2, Some(SerialBackend::Socket("/tmp/s".into())));
        assert_eq!(c.serial_log, Some("/tmp/log".into()));
        assert!(c.serial_timestamps && c.boot_trace && !c.seccomp);
        assert_eq!(c.irqchip, IrqchipMode::Off);
        assert_eq!(c.until, ["a", "b"]);
        assert_eq!(c.fail_on, ["c"]);
        assert_eq!(c.input, Some("/tmp/in".into()));
        assert_eq!(c.input_after.as_deref(), Some("d"));
        assert_eq!(c.kernel, KernelSource::File("/k".into()));
        assert_eq!(c.initramfs, Some("/i".into()));
        assert_eq!(c.cmdline.as_deref(), Some("a b"));
        assert_eq!(c.memory, 1 << 30);
        assert_eq!(c.cpus, 4);
        assert_eq!(c.serial, SerialBackend::File("/tmp/x".into()));
        assert_eq!(c.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(c.on_reboot, RebootPolicy::Restart);
        assert_eq!(c.boot, BootProtocol::Pvh);
    }

    #[test]
    fn the_readme_lists_every_flag() {
        use clap::CommandFactory;
        let readme = include_str!("../README.md");
        let table: Vec<&str> = readme
            .lines()
            .skip_while(|l| !l.starts_with("| flag | meaning"))
            .take_while(|l| l.starts_with('|'))
            .collect();
        for arg in Args::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let flag = format!("`--{long}");
            assert!(
                table.iter().any(|row| row.contains(&flag)),
                "README's flag table lacks --{long}"
            );
        }
    }

    #[test]
    fn disks() {
        assert!(parse_disk("a.img,ro").unwrap().read_only);
        for bad in [
            "",
            ",ro",
            "a.img,rw",
            "a.img,serial=012345678901234567890",
            "a,serial=a b",
        ] {
            assert!(parse_disk(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shares() {
        let s = parse_share("/srv/x,tag=src,ro").unwrap();
        assert_eq!(s.path, PathBuf::from("/srv/x"));
        assert_eq!(s.tag.as_deref(), Some("src"));
        assert!(s.read_only);
        let s = parse_share("dir").unwrap();
        assert_eq!((s.tag, s.read_only), (None, false));
        assert_eq!(parse_share("d").unwrap().tag_at(3), "share3");
        for bad in [
            "",
            ",ro",
            "d,rw",
            "d,tag=",
            "d,tag=a b",
            "d,tag=a,tag=b",
            "d,tag=0123456789012345678901234567890x",
        ] {
            assert!(parse_share(bad).is_err(), "{bad:?}");
        }
        let c = parse(&["--share", "/a", "--share", "/b,tag=t,ro"]).unwrap();
        assert_eq!(c.shares.len(), 2);
        assert_eq!(c.shares[0].tag_at(0), "share0");
        assert_eq!(c.shares[1].tag_at(1), "t");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("128M").unwrap(), 128 << 20);
        assert_eq!(parse_size("128m").unwrap(), 128 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        for bad in [
            "",
            "0",
            "0M",
            "M",
            "12Q",
            "-1G",
            "1.5G",
            "abc",
            "99999999999999999999",
            "20000000T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        for bad in [
            "",
            "0",
            "0s",
            "s",
            "10x",
            "-1s",
            "1e400",
            "..s",
            "0.0000000001",
            "\x0c.000000000073",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn cpus_range() {
        assert!(parse(&["--cpus", "0"]).is_err());
        assert!(parse(&["--cpus", "65"]).is_err());
        assert!(parse(&["--cpus", "x"]).is_err());
        assert_eq!(parse(&["--cpus", "64"]).unwrap().cpus, 64);
    }

    #[test]
    fn serial_backends() {
        assert_eq!(parse_serial("null").unwrap(), SerialBackend::Null);
        assert_eq!(parse_serial("stdio").unwrap(), SerialBackend::Stdio);
        assert_eq!(parse_serial("pty").unwrap(), SerialBackend::Pty);
        assert_eq!(
            parse_serial("socket=/x").unwrap(),
            SerialBackend::Socket("/x".into())
        );
        assert!(parse_serial("file=").is_err());
        assert!(parse_serial("socket=").is_err());
        assert!(parse_serial("tcp:1234").is_err());
    }

    #[test]
    fn dependent_flags_need_their_partner() {
        assert!(parse(&["--serial-timestamps"]).is_err());
        assert!(parse(&["--input-after", "x"]).is_err());
    }

    #[test]
    fn unknown_flags_are_errors() {
        assert!(parse(&["--frobnicate"]).is_err());
        assert!(parse(&["--on-reboot", "explode"]).is_err());
    }
}
