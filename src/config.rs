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
    /// None: the default for the kernel in use.
    pub cmdline: Option<String>,
    pub memory: u64,
    pub cpus: u8,
    pub serial: SerialBackend,
    pub timeout: Option<Duration>,
    pub on_reboot: RebootPolicy,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            kernel: KernelSource::Embedded,
            boot: BootProtocol::default(),
            initramfs: None,
            cmdline: None,
            memory: DEFAULT_MEMORY,
            cpus: 1,
            serial: SerialBackend::Stdio,
            timeout: None,
            on_reboot: RebootPolicy::Exit,
        }
    }
}

impl VmConfig {
    /// The command line the guest gets.
    pub fn effective_cmdline(&self) -> &str {
        match (&self.cmdline, &self.kernel) {
            (Some(c), _) => c,
            (None, KernelSource::Embedded) => DEFAULT_GUEST_CMDLINE,
            (None, KernelSource::File(_)) => DEFAULT_LINUX_CMDLINE,
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
    fn default_cmdline_depends_on_kernel() {
        let mut c = VmConfig::default();
        assert_eq!(c.effective_cmdline(), "hello");
        c.kernel = KernelSource::File("bzImage".into());
        assert_eq!(c.effective_cmdline(), DEFAULT_LINUX_CMDLINE);
        c.cmdline = Some("x".into());
        assert_eq!(c.effective_cmdline(), "x");
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
