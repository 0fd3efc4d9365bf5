//! kvmini's ACPI power-management block: the PM1a event and control
//! registers, the FADT reset register and the PM timer. Writing SLP_EN
//! with the \_S5 sleep type to PM1a_CNT powers the VM off; writing the
//! reset value to the reset register resets it; the PM timer counts at
//! 3.579545 MHz, 32 bits wide (the FADT sets TMR_VAL_EXT), from the
//! host's monotonic clock.
//!
//! Offsets (from PM1A_EVT_PORT): 0..2 PM1a_STS, 2..4 PM1a_EN,
//! 4..6 PM1a_CNT, 8 RESET_REG, 12..16 PM_TMR.

use std::sync::Arc;
use std::time::Instant;

use crate::arch::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, PM1A_CNT_PORT, PM1A_EVT_PORT, PM_TMR_PORT,
};
use crate::bus::BusDevice;
use crate::control::{StopReason, VmControl};

const CNT: u64 = (PM1A_CNT_PORT - PM1A_EVT_PORT) as u64;
const RESET: u64 = (ACPI_RESET_PORT - PM1A_EVT_PORT) as u64;
const TMR: u64 = (PM_TMR_PORT - PM1A_EVT_PORT) as u64;
/// The PM timer's frequency, fixed by the ACPI specification.
pub const PM_TIMER_HZ: u128 = 3_579_545;
/// SLP_EN bit of PM1_CNT.
const SLP_EN: u16 = 1 << 13;
/// The sleep type kvmini's DSDT gives \_S5 (shifted into bits 10..12).
pub const S5_SLP_TYP: u16 = 5;
/// SCI_EN: ACPI mode is on (there is no legacy mode to switch from).
const SCI_EN: u16 = 1;

pub struct AcpiPm {
    control: Arc<VmControl>,
    regs: [u8; 8],
    /// The PM timer's zero.
    epoch: Instant,
}

impl AcpiPm {
    pub fn new(control: Arc<VmControl>) -> Self {
        let mut regs = [0u8; 8];
        regs[CNT as usize..CNT as usize + 2].copy_from_slice(&SCI_EN.to_le_bytes());
        Self {
            control,
            regs,
            epoch: Instant::now(),
        }
    }

    /// The PM timer's count now: 3.579545 MHz since the device was made,
    /// wrapping at 32 bits.
    fn timer(&self) -> u32 {
        let ns = self.epoch.elapsed().as_nanos();
        (ns * PM_TIMER_HZ / 1_000_000_000) as u32
    }
}

impl BusDevice for AcpiPm {
    fn reset(&mut self) {
        *self = Self::new(self.control.clone());
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if (TMR..TMR + 4).contains(&offset) {
            // One sample for the whole access, so a 4-byte read is
            // consistent.
            let t = self.timer().to_le_bytes();
            for (i, b) in data.iter_mut().enumerate() {
                *b = t.get((offset - TMR) as usize + i).copied().unwrap_or(0);
            }
            return;
        }
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
    fn pm_timer_counts_at_3_58_mhz() {
        let c = Arc::new(VmControl::new().unwrap());
        let mut pm = AcpiPm::new(c);
        let read = |pm: &mut AcpiPm| {
            let mut d = [0u8; 4];
            pm.read(TMR, &mut d);
            u32::from_le_bytes(d)
        };
        let t0 = read(&mut pm);
        let start = Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let t1 = read(&mut pm);
        let took = start.elapsed().as_secs_f64();
        let ticks = f64::from(t1.wrapping_sub(t0));
        // At least the 50 ms slept; at most what elapsed around the reads
        // (plus a tick of rounding).
        assert!(ticks >= 0.050 * 3_579_545.0 - 1.0, "{ticks} ticks");
        assert!(
            ticks <= (took + 0.001) * 3_579_545.0,
            "{ticks} ticks in {took} s"
        );
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
