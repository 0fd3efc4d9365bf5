//! A minimal i8042 keyboard controller: enough for Linux's probe and for
//! the CPU reset command (0xFE on the command port), which ends the VM.
//! Offsets: 0 is the data port (0x60), 4 the command/status port (0x64).

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::control::{StopReason, VmControl};

const DATA: u64 = 0;
const COMMAND: u64 = 4;

const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_RESET_CPU: u8 = 0xfe;

const SELF_TEST_OK: u8 = 0x55;
/// Controller configuration at reset: keyboard interrupt on, system flag.
const CTR_DEFAULT: u8 = 0x45;

pub struct I8042 {
    control: Arc<VmControl>,
    status: u8,
    ctr: u8,
    output: Option<u8>,
    /// The command whose data byte the next write to the data port is.
    pending: Option<u8>,
}

impl I8042 {
    pub fn new(control: Arc<VmControl>) -> Self {
        Self {
            control,
            status: STATUS_SYSTEM_FLAG,
            ctr: CTR_DEFAULT,
            output: None,
            pending: None,
        }
    }

    fn reply(&mut self, byte: u8) {
        self.output = Some(byte);
    }

    fn command(&mut self, cmd: u8) {
        self.status |= STATUS_LAST_WAS_COMMAND;
        match cmd {
            CMD_READ_CTR => self.reply(self.ctr),
            CMD_WRITE_CTR | CMD_WRITE_OUTPUT_PORT => self.pending = Some(cmd),
            CMD_SELF_TEST => self.reply(SELF_TEST_OK),
            CMD_TEST_KBD | CMD_TEST_AUX => self.reply(0),
            CMD_READ_OUTPUT_PORT => self.reply(0x01),
            CMD_DISABLE_KBD | CMD_ENABLE_KBD | CMD_DISABLE_AUX | CMD_ENABLE_AUX => {}
            CMD_RESET_CPU => self.control.stop(StopReason::Reset),
            other => log::debug!("i8042: ignored command {other:#x}"),
        }
    }

    fn data(&mut self, byte: u8) {
        self.status &= !STATUS_LAST_WAS_COMMAND;
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.ctr = byte,
            // The output port's reset line is not modelled: only command
            // 0xFE resets, which keeps the rule for guests simple.
            _ => log::debug!("i8042: ignored data byte {byte:#x}"),
        }
    }
}

impl BusDevice for I8042 {
    fn reset(&mut self) {
        *self = Self::new(self.control.clone());
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match (offset, data.len()) {
            (DATA, 1) => self.output.take().unwrap_or(0),
            (COMMAND, 1) => {
                let full = if self.output.is_some() {
                    STATUS_OUTPUT_FULL
                } else {
                    0
                };
                self.status | full
            }
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (DATA, [byte]) => self.data(*byte),
            (COMMAND, [cmd]) => self.command(*cmd),
            _ => log::debug!("i8042: ignored {}-byte write at +{offset}", data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (I8042, Arc<VmControl>) {
        let c = Arc::new(VmControl::new().unwrap());
        (I8042::new(c.clone()), c)
    }

    fn read(d: &mut I8042, offset: u64) -> u8 {
        let mut b = [0];
        d.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_stops_the_vm() {
        let (mut d, c) = dev();
        d.write(COMMAND, &[0xfe, 0]);
        assert!(!c.is_stopping(), "a 2-byte write is not a reset");
        d.write(COMMAND, &[CMD_RESET_CPU]);
        assert_eq!(c.reason(), Some(StopReason::Reset));
    }

    #[test]
    fn self_test_answers_through_the_data_port() {
        let (mut d, c) = dev();
        assert_eq!(read(&mut d, COMMAND) & STATUS_OUTPUT_FULL, 0);
        d.write(COMMAND, &[CMD_SELF_TEST]);
        assert_ne!(read(&mut d, COMMAND) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(read(&mut d, DATA), SELF_TEST_OK);
        assert_eq!(read(&mut d, COMMAND) & STATUS_OUTPUT_FULL, 0);
        assert!(!c.is_stopping());
    }

    #[test]
    fn ctr_round_trips() {
        let (mut d, _) = dev();
        d.write(COMMAND, &[CMD_WRITE_CTR]);
        d.write(DATA, &[0x30]);
        d.write(COMMAND, &[CMD_READ_CTR]);
        assert_eq!(read(&mut d, DATA), 0x30);
    }

    #[test]
    fn only_command_0xfe_resets() {
        let (mut d, c) = dev();
        for cmd in (0..=0xffu8).filter(|&c| c != CMD_RESET_CPU) {
            d.write(COMMAND, &[cmd]);
            d.write(DATA, &[0x00]);
        }
        assert!(!c.is_stopping());
    }
}
