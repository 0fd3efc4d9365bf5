//! Guest RAM: its layout around the 32-bit device hole, and its creation.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::layout::{EBDA_START, HIMEM_START, MIN_MEMORY, MMIO_GAP_END, MMIO_GAP_START};

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{} is below the minimum of {}{}", human(*.0), human(MIN_MEMORY), suggestion(*.0))]
    TooSmall(u64),
    #[error("{} is above the maximum of {} (KVM's largest memory slot)", human(*.0), human(MAX_MEMORY))]
    TooLarge(u64),
    #[error("{0} bytes is not a whole number of 4 KiB pages (KVM maps guest memory by the page)")]
    NotPages(u64),
    #[error("cannot map {size} bytes of guest memory")]
    Mmap {
        size: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// The guest-physical ranges backed by RAM for a guest of `size` bytes:
/// one below the device hole and, for guests larger than 3 GiB, one above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), size - MMIO_GAP_START),
        ]
    }
}

/// An e820 map entry: address, size, type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// The e820 map for a guest of `size` bytes: conventional memory below the
/// EBDA, the EBDA/BIOS area reserved, then RAM from 1 MiB, split around the
/// device hole.
pub fn e820_map(size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, len) in ram_ranges(size) {
        let start = start.0.max(HIMEM_START);
        let end = if start >= MMIO_GAP_END {
            start + len
        } else {
            len
        };
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// The largest guest kvmini makes: KVM takes at most 2^31 - 1 pages in
/// one memory slot, and RAM above the 32-bit hole is one slot.
pub const MAX_MEMORY: u64 = 8 << 40;

const PAGE: u64 = 4096;

/// `bytes` as --memory spells it: "16M", "1G", "4096K", or bytes.
fn human(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// For a size that reads as a count of MiB given without its unit
/// (`--memory 512`): the flag the user probably meant.
fn suggestion(bytes: u64) -> String {
    match bytes.checked_mul(1 << 20) {
        Some(m) if (MIN_MEMORY..=MAX_MEMORY).contains(&m) => {
            format!(" (a bare number is bytes: did you mean --memory {bytes}M?)")
        }
        _ => String::new(),
    }
}

/// Checks a guest size before anything is made: at least [`MIN_MEMORY`],
/// at most [`MAX_MEMORY`], whole pages. What passes, KVM takes.
pub fn check_size(size: u64) -> Result<(), Error> {
    if size < MIN_MEMORY {
        return Err(Error::TooSmall(size));
    }
    if size > MAX_MEMORY {
        return Err(Error::TooLarge(size));
    }
    if !size.is_multiple_of(PAGE) {
        return Err(Error::NotPages(size));
    }
    Ok(())
}

/// Creates anonymous guest RAM of `size` bytes. The mapping is
/// MAP_NORESERVE and untouched pages cost the host nothing.
pub fn create(size: u64) -> Result<GuestMemoryMmap, Error> {
    check_size(size)?;
    let ranges = ram_ranges(size)
        .into_iter()
        .map(|(addr, len)| usize::try_from(len).map(|len| (addr, len)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| Error::TooLarge(size))?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| Error::Mmap { size, source })
}

/// Gives every page of `mem` back to the host, so that the guest finds
/// zeros, as in memory just created: a guest rebooted in place starts from
/// the same memory as its first boot, and the pages the last boot touched
/// stop costing the host. (The mapping is private and anonymous: after
/// MADV_DONTNEED a page reads as zero; KVM's memory slots follow the
/// mapping, so the guest sees the same.)
pub fn zero(mem: &GuestMemoryMmap) -> std::io::Result<()> {
    for region in mem.iter() {
        // SAFETY: the range is exactly one live mapping owned by `mem`;
        // nothing else holds references into guest memory while no vCPU
        // runs and no device works.
        let r = unsafe {
            libc::madvise(
                region.as_ptr().cast(),
                region.len() as usize,
                libc::MADV_DONTNEED,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn zero_gives_back_fresh_memory() {
        let mem = create(MIN_MEMORY.max(8 << 20)).unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        let last = mem.last_addr().0 - 3;
        mem.write_obj(7u32, GuestAddress(last)).unwrap();
        zero(&mem).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(), 0);
        assert_eq!(mem.read_obj::<u32>(GuestAddress(last)).unwrap(), 0);
    }

    #[test]
    fn small_guest_is_one_range() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
    }

    #[test]
    fn large_guest_is_split_around_the_hole() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), 3 << 30));
        assert_eq!(r[1], (GuestAddress(4 << 30), 1 << 30));
    }

    #[test]
    fn e820_sums_to_ram_minus_legacy_hole() {
        for size in [32u64 << 20, 128 << 20, 3 << 30, 5 << 30] {
            let map = e820_map(size);
            let ram: u64 = map
                .iter()
                .filter(|e| e.kind == E820_RAM)
                .map(|e| e.size)
                .sum();
            assert_eq!(ram, size - (HIMEM_START - EBDA_START), "size {size}");
            // No RAM entry may touch the device hole.
            for e in map.iter().filter(|e| e.kind == E820_RAM) {
                assert!(e.addr + e.size <= MMIO_GAP_START || e.addr >= MMIO_GAP_END);
            }
        }
    }

    #[test]
    fn e820_above_4g_starts_at_4g() {
        let map = e820_map(5 << 30);
        let last = map.last().copied().unwrap();
        assert_eq!(last.addr, MMIO_GAP_END);
        assert_eq!(last.size, 2 << 30);
    }

    #[test]
    fn too_small_is_rejected() {
        assert!(matches!(create(1 << 20), Err(Error::TooSmall(_))));
    }
}
