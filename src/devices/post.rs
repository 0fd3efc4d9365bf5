//! Port 0x80, the POST/diagnostic port: writes are boot markers for
//! `--boot-trace` and otherwise ignored (Linux also uses the port as an
//! I/O delay). Reads return all ones.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::trace::BootTrace;

pub struct PostCode {
    trace: Option<Arc<BootTrace>>,
}

impl PostCode {
    pub fn new(trace: Option<Arc<BootTrace>>) -> Self {
        Self { trace }
    }
}

impl BusDevice for PostCode {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let (Some(t), [code]) = (&self.trace, data) {
            t.post_code(*code);
        }
    }
}
