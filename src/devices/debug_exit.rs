//! The debug-exit port (QEMU's isa-debug-exit at 0xf4, 4 ports wide): a
//! write of 1, 2 or 4 bytes at 0xf4 ends the VM, its low byte giving the
//! status (kvm-unit-tests writes it with `outl`, others with `outb`). By
//! default that byte is kvmini's exit status as it is; with
//! `--debug-exit-status qemu`, it becomes `(byte << 1) | 1`, QEMU's rule,
//! for harnesses written against QEMU. Other writes are ignored; reads
//! return all ones.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::control::{StopReason, VmControl};

/// How a written byte becomes the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExitRule {
    /// The byte is the status.
    #[default]
    Verbatim,
    /// The status is `(byte << 1) | 1`, truncated to 8 bits as QEMU's
    /// exit status is.
    Qemu,
}

pub struct DebugExit {
    control: Arc<VmControl>,
    rule: ExitRule,
}

impl DebugExit {
    pub fn new(control: Arc<VmControl>, rule: ExitRule) -> Self {
        Self { control, rule }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 1 | 2 | 4) => self.control.stop(match self.rule {
                ExitRule::Verbatim => StopReason::GuestExit(data[0]),
                ExitRule::Qemu => StopReason::GuestExitQemu(data[0]),
            }),
            _ => log::debug!(
                "debug-exit: ignored {}-byte write at offset {offset}",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_word_and_dword_writes_stop_with_the_low_byte() {
        for data in [&[0x2a][..], &[0x2a, 0x01], &[0x2a, 0, 0, 0x80]] {
            let c = Arc::new(VmControl::new().unwrap());
            let mut d = DebugExit::new(c.clone(), ExitRule::Verbatim);
            d.write(0, data);
            assert_eq!(c.reason(), Some(StopReason::GuestExit(0x2a)), "{data:?}");
        }
    }

    #[test]
    fn other_writes_are_ignored() {
        let c = Arc::new(VmControl::new().unwrap());
        let mut d = DebugExit::new(c.clone(), ExitRule::Verbatim);
        d.write(0, &[1, 2, 3]);
        d.write(1, &[1]);
        d.write(0, &[1; 8]);
        assert!(!c.is_stopping());
    }

    #[test]
    fn qemu_rule_is_recorded() {
        let c = Arc::new(VmControl::new().unwrap());
        let mut d = DebugExit::new(c.clone(), ExitRule::Qemu);
        d.write(0, &[0x10, 0, 0, 0]);
        assert_eq!(c.reason(), Some(StopReason::GuestExitQemu(0x10)));
    }
}
