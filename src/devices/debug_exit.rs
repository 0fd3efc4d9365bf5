//! The debug-exit port: a one-byte write ends the VM with that byte as
//! kvmini's exit status. Wider writes are ignored; reads return all ones.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::control::{StopReason, VmControl};

pub struct DebugExit {
    control: Arc<VmControl>,
}

impl DebugExit {
    pub fn new(control: Arc<VmControl>) -> Self {
        Self { control }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (0, [status]) => self.control.stop(StopReason::GuestExit(*status)),
            _ => log::debug!("debug-exit: ignored {}-byte write", data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_write_stops_with_that_status() {
        let c = Arc::new(VmControl::new().unwrap());
        let mut d = DebugExit::new(c.clone());
        d.write(0, &[0x2a, 0]);
        assert!(!c.is_stopping());
        d.write(0, &[0x2a]);
        assert_eq!(c.reason(), Some(StopReason::GuestExit(0x2a)));
    }
}
