//! kvmini's ACPI power-management block: the PM1a event and control
//! registers and the FADT reset register. Writing SLP_EN with the \_S5
//! sleep type to PM1a_CNT powers the VM off; writing the reset value to
//! the reset register resets it.
//!
//! Offsets (from PM1A_EVT_PORT): 0..2 PM1a_STS, 2..4 PM1a_EN,
//! 4..6 PM1a_CNT, 8 RESET_REG.

use std::sync::Arc;

use crate::arch::layout::{ACPI_RESET_PORT, ACPI_RESET_VALUE, PM1A_CNT_PORT, PM1A_EVT_PORT};
use crate::bus::BusDevice;
use crate::control::{StopReason, VmControl};

const CNT: u64 = (PM1A_CNT_PORT - PM1A_EVT_PORT) as u64;
const RESET: u64 = (ACPI_RESET_PORT - PM1A_EVT_PORT) as u64;
/// SLP_EN bit of PM1_CNT.
const SLP_EN: u16 = 1 << 13;
/// The sleep type kvmini's DSDT gives \_S5 (shifted into bits 10..12).
pub const S5_SLP_TYP: u16 = 5;
/// SCI_EN: ACPI mode is on (there is no legacy mode to switch from).
const SCI_EN: u16 = 1;

pub struct AcpiPm {
    control: Arc<VmControl>,
    regs: [u8; 8],
}

impl AcpiPm {
    pub fn new(control: Arc<VmControl>) -> Self {
        let mut regs = [0u8; 8];
        regs[CNT as usize..CNT as usize + 2].copy_from_slice(&SCI_EN.to_le_bytes());
        Self { control, regs }
    }
}

impl BusDevice for AcpiPm {
    fn reset(&mut self) {
        *self = Self::new(self.control.clone());
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.regs.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == RESET {
            if data == [ACPI_RESET_VALUE] {
                self.control.stop(StopReason::Reset);
            }
            return;
        }
        for (i, b) in data.iter().enumerate() {
            match offset as usize + i {
                // Status bits are write-one-to-clear.
                o @ 0..=1 => self.regs[o] &= !b,
                o @ 2..=7 => self.regs[o] = *b,
                _ => {}
            }
        }
        let cnt = u16::from_le_bytes([self.regs[CNT as usize], self.regs[CNT as usize + 1]]);
        if cnt & SLP_EN != 0 {
            self.regs[CNT as usize + 1] &= !((SLP_EN >> 8) as u8);
            let slp_typ = (cnt >> 10) & 7;
            if slp_typ == S5_SLP_TYP {
                self.control.stop(StopReason::PowerOff);
            } else {
                log::debug!("acpi: ignored sleep type {slp_typ}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_slp_en_powers_off() {
        let c = Arc::new(VmControl::new().unwrap());
        let mut pm = AcpiPm::new(c.clone());
        // SLP_TYP alone does nothing.
        pm.write(CNT, &(S5_SLP_TYP << 10).to_le_bytes());
        assert!(!c.is_stopping());
        // Another sleep state with SLP_EN does nothing either.
        pm.write(CNT, &((3 << 10) | SLP_EN).to_le_bytes());
        assert!(!c.is_stopping());
        pm.write(CNT, &((S5_SLP_TYP << 10) | SLP_EN).to_le_bytes());
        assert_eq!(c.reason(), Some(StopReason::PowerOff));
    }

    #[test]
    fn reset_register_resets() {
        let c = Arc::new(VmControl::new().unwrap());
        let mut pm = AcpiPm::new(c.clone());
        pm.write(RESET, &[0x01]);
        assert!(!c.is_stopping());
        pm.write(RESET, &[ACPI_RESET_VALUE]);
        assert_eq!(c.reason(), Some(StopReason::Reset));
    }

    #[test]
    fn sci_en_reads_set() {
        let c = Arc::new(VmControl::new().unwrap());
        let mut pm = AcpiPm::new(c);
        let mut d = [0u8; 2];
        pm.read(CNT, &mut d);
        assert_eq!(u16::from_le_bytes(d) & SCI_EN, SCI_EN);
    }
}
