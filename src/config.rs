//! What a VM is made of, as decided by the command line (or a library user).

use std::path::PathBuf;
use std::time::Duration;

pub use crate::loader::{BootProtocol, KernelSource};

/// Default guest RAM.
pub const DEFAULT_MEMORY: u64 = 128 << 20;
/// Most vCPUs kvmini creates.
pub const MAX_CPUS: u8 = 64;
/// The command line for kernels other than the embedded guest: a serial
/// console; reboot through the keyboard controller; reboot at once on a
/// panic (kvmini reports it as a panic, see README); no PCI scan and no
/// PS/2 probing, since kvmini emulates neither.
pub const DEFAULT_LINUX_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd";
/// The command line for the embedded guest.
pub const DEFAULT_GUEST_CMDLINE: &str = "hello";

/// Where a serial port's output goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SerialBackend {
    #[default]
    Stdio,
    File(PathBuf),
    Null,
    /// A new pseudo-terminal; its path is printed on stderr.
    Pty,
    /// A Unix stream socket server at this path.
    Socket(PathBuf),
    /// `--exec`'s COM2: the command's framed stdout and stderr, to
    /// kvmini's (not a choice of --serial).
    ExecStreams,
}

/// A disk image given to the guest as a virtio-blk device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// What the device answers to GET_ID (/dev/disk/by-id), at most 20 bytes.
    pub serial: String,
}

/// A host directory given to the guest as a virtio-9p device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareConfig {
    pub path: PathBuf,
    /// The mount tag; None: `share0`, `share1`, ... by the share's place
    /// among the shares.
    pub tag: Option<String>,
    /// The server refuses every change (EROFS), whatever the guest mounts.
    pub read_only: bool,
}

impl ShareConfig {
    /// The tag of the share at `index` among the shares.
    pub fn tag_at(&self, index: usize) -> String {
        self.tag.clone().unwrap_or_else(|| format!("share{index}"))
    }
}

/// Whether the VM gets KVM's in-kernel interrupt controllers and PIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IrqchipMode {
    /// On for every kernel but the built-in tiny guest, which polls and
    /// needs no interrupts, and on for more than one vCPU.
    #[default]
    Auto,
    On,
    Off,
}

/// What a guest reboot does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RebootPolicy {
    /// kvmini exits with status 0.
    #[default]
    Exit,
    /// The guest is booted again in place.
    Restart,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VmConfig {
    pub kernel: KernelSource,
    pub boot: BootProtocol,
    pub initramfs: Option<PathBuf>,
    /// A multiboot kernel's modules, after the initramfs (its first).
    pub modules: Vec<crate::loader::ModuleConfig>,
    /// None: the default for the kernel in use.
    pub cmdline: Option<String>,
    pub memory: u64,
    pub cpus: u8,
    pub serial: SerialBackend,
    /// COM2's back end; no COM2 without one.
    pub serial2: Option<SerialBackend>,
    /// Hold the guest until a client attaches to COM1's (pty or socket)
    /// back end, and COM2's: `--serial socket=PATH,wait`.
    pub serial_wait: bool,
    pub serial2_wait: bool,
    /// A copy of COM1's output.
    pub serial_log: Option<PathBuf>,
    /// Prefix each line of the log with the time since start.
    pub serial_timestamps: bool,
    pub timeout: Option<Duration>,
    /// Disk images, in order: /dev/vda, /dev/vdb, ...
    pub disks: Vec<DiskConfig>,
    /// Host directories, in order (after the disks in the DSDT).
    pub shares: Vec<ShareConfig>,
    pub on_reboot: RebootPolicy,
    /// Patterns that end the VM with status 0 when COM1 prints them.
    pub until: Vec<String>,
    /// Patterns that end the VM with the fail-on status.
    pub fail_on: Vec<String>,
    /// Read COM1's output as a KTAP report and end the VM on its verdict.
    pub ktap: bool,
    /// With `ktap`: a top-level failure does not end the VM early.
    pub ktap_keep_going: bool,
    /// With `ktap`: write the report as JUnit XML here at the end.
    pub junit: Option<PathBuf>,
    /// How a debug-exit write becomes the exit status.
    pub debug_exit: crate::devices::debug_exit::ExitRule,
    /// Bytes typed into COM1.
    pub input: Option<PathBuf>,
    /// Type `input` once COM1's output matches this.
    pub input_after: Option<String>,
    /// Print a boot timeline on stderr at exit.
    pub boot_trace: bool,
    /// Confine kvmini's threads with seccomp filters.
    pub seccomp: bool,
    pub irqchip: IrqchipMode,
    /// `--gdb`: where the gdb stub listens, and whether the guest waits.
    pub gdb: Option<crate::gdb::GdbConfig>,
    /// `--exec`: run a command in the kernel on the host's files.
    pub exec: Option<crate::exec::ExecConfig>,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            kernel: KernelSource::Embedded,
            boot: BootProtocol::default(),
            initramfs: None,
            modules: Vec::new(),
            cmdline: None,
            memory: DEFAULT_MEMORY,
            cpus: 1,
            serial: SerialBackend::Stdio,
            serial2: None,
            serial_wait: false,
            serial2_wait: false,
            serial_log: None,
            serial_timestamps: false,
            timeout: None,
            disks: Vec::new(),
            shares: Vec::new(),
            on_reboot: RebootPolicy::Exit,
            until: Vec::new(),
            fail_on: Vec::new(),
            ktap: false,
            ktap_keep_going: false,
            junit: None,
            debug_exit: Default::default(),
            input: None,
            input_after: None,
            boot_trace: false,
            seccomp: true,
            irqchip: IrqchipMode::Auto,
            gdb: None,
            exec: None,
        }
    }
}

/// A config whose flags contradict each other.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("--cpus {0} needs the in-kernel irqchip to start the other vCPUs; drop --irqchip off")]
    SmpNeedsIrqchip(u8),
    #[error("--serial2 stdio: COM1 already uses stdio; give COM2 another back end")]
    BothStdio,
}

impl VmConfig {
    /// Rejects combinations of settings that cannot work together. Needs no
    /// KVM and touches no file: [`crate::run`] calls it first.
    pub fn check(&self) -> Result<(), Error> {
        if self.cpus > 1 && !self.wants_irqchip() {
            return Err(Error::SmpNeedsIrqchip(self.cpus));
        }
        if self.serial2 == Some(SerialBackend::Stdio) && self.serial == SerialBackend::Stdio {
            return Err(Error::BothStdio);
        }
        Ok(())
    }

    /// The command line the guest gets.
    pub fn effective_cmdline(&self) -> &str {
        match (&self.cmdline, &self.kernel) {
            (Some(c), _) => c,
            (None, KernelSource::Embedded) => DEFAULT_GUEST_CMDLINE,
            (None, KernelSource::File(_)) => DEFAULT_LINUX_CMDLINE,
        }
    }

    /// Whether this VM gets the in-kernel irqchip and PIT.
    pub fn wants_irqchip(&self) -> bool {
        match self.irqchip {
            IrqchipMode::On => true,
            IrqchipMode::Off => false,
            IrqchipMode::Auto => self.kernel != KernelSource::Embedded || self.cpus > 1,
        }
    }

    /// A triple fault is a reboot request when the kernel was told to
    /// reboot that way (`reboot=t`, `reboot=triple`).
    pub fn triple_fault_reboots(&self) -> bool {
        self.effective_cmdline().split_whitespace().any(|w| {
            w.strip_prefix("reboot=")
                .is_some_and(|v| v.split(',').any(|m| m.starts_with('t')))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contradictions_are_caught_before_anything_runs() {
        let smp = VmConfig {
            cpus: 2,
            irqchip: IrqchipMode::Off,
            ..Default::default()
        };
        assert_eq!(smp.check(), Err(Error::SmpNeedsIrqchip(2)));
        let auto = VmConfig {
            cpus: 2,
            ..Default::default()
        };
        assert_eq!(auto.check(), Ok(()));
        let both = VmConfig {
            serial2: Some(SerialBackend::Stdio),
            ..Default::default()
        };
        assert_eq!(both.check(), Err(Error::BothStdio));
        let com2_elsewhere = VmConfig {
            serial: SerialBackend::Null,
            serial2: Some(SerialBackend::Stdio),
            ..Default::default()
        };
        assert_eq!(com2_elsewhere.check(), Ok(()));
    }

    #[test]
    fn default_cmdline_depends_on_kernel() {
        let mut c = VmConfig::default();
        assert_eq!(c.effective_cmdline(), "hello");
        c.kernel = KernelSource::File("bzImage".into());
        assert_eq!(c.effective_cmdline(), DEFAULT_LINUX_CMDLINE);
        c.cmdline = Some("x".into());
        assert_eq!(c.effective_cmdline(), "x");
    }

    #[test]
    fn irqchip_auto_is_off_only_for_the_tiny_guest_on_one_cpu() {
        let mut c = VmConfig::default();
        assert!(!c.wants_irqchip());
        c.cpus = 2;
        assert!(c.wants_irqchip());
        c.cpus = 1;
        c.kernel = KernelSource::File("vmlinux".into());
        assert!(c.wants_irqchip());
        c.irqchip = IrqchipMode::Off;
        assert!(!c.wants_irqchip());
        c.kernel = KernelSource::Embedded;
        c.irqchip = IrqchipMode::On;
        assert!(c.wants_irqchip());
    }

    #[test]
    fn reboot_t_makes_triple_fault_a_reboot() {
        let mut c = VmConfig::default();
        assert!(!c.triple_fault_reboots());
        c.cmdline = Some("console=ttyS0 reboot=t".into());
        assert!(c.triple_fault_reboots());
        c.cmdline = Some("reboot=k,triple".into());
        assert!(c.triple_fault_reboots());
        c.cmdline = Some("reboot=k panic=-1".into());
        assert!(!c.triple_fault_reboots());
    }
}
