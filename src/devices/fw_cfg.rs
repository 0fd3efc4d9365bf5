//! The legacy interface of QEMU's firmware configuration device (fw_cfg),
//! as much of it as test kernels read: a 16-bit selector written to port
//! 0x510 picks an item, and byte reads of port 0x511 return it one byte at
//! a time. kvm-unit-tests learns the CPU count and RAM size this way when
//! its environment does not give them.
//!
//! Items: 0x0000 the signature "QEMU", 0x0001 the interface id (1: the
//! port interface only, no DMA), 0x0003 RAM size (u64), 0x0005 CPU count
//! (u16), 0x000f the maximum CPU count (u16), 0x0019 the file directory
//! (empty: a count of 0, big-endian). Any other selector is an empty item;
//! reads past an item's end return 0, as QEMU's do. Writes to the data
//! port are ignored (QEMU dropped them too).

use crate::bus::BusDevice;

pub const SIGNATURE: u16 = 0x0000;
pub const ID: u16 = 0x0001;
pub const RAM_SIZE: u16 = 0x0003;
pub const NB_CPUS: u16 = 0x0005;
pub const MAX_CPUS: u16 = 0x000f;
pub const FILE_DIR: u16 = 0x0019;

pub struct FwCfg {
    ram_size: u64,
    cpus: u16,
    item: Vec<u8>,
    offset: usize,
}

impl FwCfg {
    pub fn new(ram_size: u64, cpus: u16) -> Self {
        let mut d = Self {
            ram_size,
            cpus,
            item: Vec::new(),
            offset: 0,
        };
        d.select(SIGNATURE);
        d
    }

    fn select(&mut self, key: u16) {
        self.item = match key {
            SIGNATURE => b"QEMU".to_vec(),
            ID => 1u32.to_le_bytes().to_vec(),
            RAM_SIZE => self.ram_size.to_le_bytes().to_vec(),
            NB_CPUS | MAX_CPUS => self.cpus.to_le_bytes().to_vec(),
            FILE_DIR => 0u32.to_be_bytes().to_vec(),
            _ => Vec::new(),
        };
        self.offset = 0;
    }
}

impl BusDevice for FwCfg {
    fn reset(&mut self) {
        self.select(SIGNATURE);
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset != 1 {
            // The selector port reads as nothing.
            data.fill(0);
            return;
        }
        for b in data.iter_mut() {
            *b = self.item.get(self.offset).copied().unwrap_or(0);
            self.offset = self.offset.saturating_add(1);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (0, [lo, hi]) => self.select(u16::from_le_bytes([*lo, *hi])),
            // A byte write selects with the high byte zero, as a 16-bit
            // port reads it.
            (0, [lo]) => self.select(u16::from(*lo)),
            _ => log::debug!("fw_cfg: ignored {}-byte write at {offset}", data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(d: &mut FwCfg, key: u16, len: usize) -> Vec<u8> {
        d.write(0, &key.to_le_bytes());
        let mut v = vec![0u8; len];
        for b in v.iter_mut() {
            let mut one = [0u8];
            d.read(1, &mut one);
            *b = one[0];
        }
        v
    }

    #[test]
    fn items_read_as_kvm_unit_tests_reads_them() {
        let mut d = FwCfg::new(128 << 20, 3);
        assert_eq!(item(&mut d, SIGNATURE, 4), b"QEMU");
        assert_eq!(item(&mut d, NB_CPUS, 2), [3, 0]);
        assert_eq!(item(&mut d, MAX_CPUS, 2), [3, 0]);
        assert_eq!(item(&mut d, RAM_SIZE, 8), (128u64 << 20).to_le_bytes());
        assert_eq!(item(&mut d, ID, 4), [1, 0, 0, 0]);
        assert_eq!(item(&mut d, FILE_DIR, 4), [0, 0, 0, 0]);
        // Past the end, and unknown items: zeros.
        assert_eq!(item(&mut d, NB_CPUS, 4), [3, 0, 0, 0]);
        assert_eq!(item(&mut d, 0x1234, 3), [0, 0, 0]);
        // Selecting again starts the item over.
        assert_eq!(item(&mut d, SIGNATURE, 2), b"QE");
        assert_eq!(item(&mut d, SIGNATURE, 4), b"QEMU");
        // A wide read of the data port reads consecutive bytes.
        d.write(0, &SIGNATURE.to_le_bytes());
        let mut four = [0u8; 4];
        d.read(1, &mut four);
        assert_eq!(&four, b"QEMU");
    }

    #[test]
    fn reset_selects_the_signature() {
        let mut d = FwCfg::new(1 << 30, 1);
        item(&mut d, RAM_SIZE, 3);
        d.reset();
        let mut four = [0u8; 4];
        d.read(1, &mut four);
        assert_eq!(&four, b"QEMU");
    }
}
