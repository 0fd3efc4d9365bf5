//! Address ranges (I/O ports or MMIO) mapped to devices.
//!
//! The vCPU loop hands every port or MMIO access to a [`Bus`]; the bus finds
//! the device whose range holds the whole access and calls it with the
//! offset into that range. Devices never see absolute addresses. Accesses
//! no device claims read as all ones and ignore writes.

use std::sync::{Arc, Mutex, PoisonError};

/// A device on a bus. `offset` is relative to the start of its range;
/// `data.len()` is the access size (1, 2, 4 or 8 bytes).
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
    /// The machine's reset line, between two boots of a guest rebooted in
    /// place: the device returns to the state it was created in (its host
    /// resources, such as files and eventfds, stay).
    fn reset(&mut self) {}
}

/// A device shared between the bus and whoever else needs it (the console
/// feeds input into the serial device).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    BadRange { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
}

struct Range {
    base: u64,
    len: u64,
    device: SharedDevice,
}

/// A set of non-overlapping ranges, sorted by base address.
#[derive(Default)]
pub struct Bus {
    ranges: Vec<Range>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `device` at `base..base+len`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), Error> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(Error::BadRange { base, len })?;
        let at = self.ranges.partition_point(|r| r.base < base);
        let overlaps_prev = at > 0 && {
            let p = &self.ranges[at - 1];
            p.base + p.len > base
        };
        let overlaps_next = self.ranges.get(at).is_some_and(|n| n.base < end);
        if overlaps_prev || overlaps_next {
            return Err(Error::Overlap { base, len });
        }
        self.ranges.insert(at, Range { base, len, device });
        Ok(())
    }

    /// The device and offset for an access of `size` bytes at `addr`, if one
    /// device's range holds all of it.
    fn resolve(&self, addr: u64, size: usize) -> Option<(&SharedDevice, u64)> {
        let at = self.ranges.partition_point(|r| r.base <= addr);
        let r = self.ranges.get(at.checked_sub(1)?)?;
        let offset = addr - r.base;
        let end = offset.checked_add(size as u64)?;
        (end <= r.len).then_some((&r.device, offset))
    }

    /// Reads into `data`; returns false (and fills `data` with ones) when no
    /// device claims the access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((device, offset)) => {
                device
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Resets every device on the bus (see [`BusDevice::reset`]).
    pub fn reset(&self) {
        for r in &self.ranges {
            r.device
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .reset();
        }
    }

    /// Writes `data`; returns false when no device claims the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((device, offset)) => {
                device
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the accesses it sees and answers reads with its offset.
    #[derive(Default)]
    struct Probe {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
        fn reset(&mut self) {
            self.writes.clear();
        }
    }

    #[test]
    fn reset_reaches_every_device() {
        let mut bus = Bus::new();
        let (a, b) = (probe(), probe());
        bus.insert(a.clone(), 0x10, 4).unwrap();
        bus.insert(b.clone(), 0x20, 4).unwrap();
        assert!(bus.write(0x10, b"a") && bus.write(0x20, b"b"));
        bus.reset();
        assert!(a.lock().unwrap().writes.is_empty());
        assert!(b.lock().unwrap().writes.is_empty());
    }

    fn probe() -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe::default()))
    }

    #[test]
    fn devices_see_offsets_not_addresses() {
        let mut bus = Bus::new();
        let p = probe();
        bus.insert(p.clone(), 0x3f8, 8).unwrap();
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fd, &mut d));
        assert_eq!(d, [5]);
        assert!(bus.write(0x3f8, b"x"));
        assert_eq!(p.lock().unwrap().writes, vec![(0, vec![b'x'])]);
    }

    #[test]
    fn unclaimed_reads_are_all_ones_and_writes_are_dropped() {
        let mut bus = Bus::new();
        bus.insert(probe(), 0x60, 5).unwrap();
        let mut d = [0u8; 4];
        assert!(!bus.read(0x1234, &mut d));
        assert_eq!(d, [0xff; 4]);
        assert!(!bus.write(0x5f, &[1]));
        assert!(!bus.write(0x65, &[1]));
    }

    #[test]
    fn access_crossing_the_end_of_a_range_is_unclaimed() {
        let mut bus = Bus::new();
        bus.insert(probe(), 0x3f8, 8).unwrap();
        let mut d = [0u8; 4];
        assert!(!bus.read(0x3fe, &mut d));
        assert!(bus.read(0x3fc, &mut d));
    }

    #[test]
    fn overlaps_and_empty_ranges_are_rejected() {
        let mut bus = Bus::new();
        bus.insert(probe(), 0x10, 0x10).unwrap();
        bus.insert(probe(), 0x30, 0x10).unwrap();
        for (base, len) in [(0x8, 0x9), (0x1f, 1), (0x15, 2), (0x20, 0x11), (0x0, 0x100)] {
            assert_eq!(
                bus.insert(probe(), base, len),
                Err(Error::Overlap { base, len })
            );
        }
        bus.insert(probe(), 0x20, 0x10).unwrap();
        assert!(bus.insert(probe(), 0x100, 0).is_err());
        assert!(bus.insert(probe(), u64::MAX, 2).is_err());
    }
}
