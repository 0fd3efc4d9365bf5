//! Identity-mapped boot page tables for the 64-bit entry.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::layout::{IDENTITY_MAP_GIB, PDE_START, PDPTE_START, PML4_START};

const PRESENT_RW: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

/// Writes a PML4, a PDPT and one page directory per GiB so that the first
/// [`IDENTITY_MAP_GIB`] GiB are identity-mapped with 2 MiB pages. Returns
/// the value for CR3.
pub fn setup<M: GuestMemory>(mem: &M) -> Result<u64, vm_memory::GuestMemoryError> {
    mem.write_obj(PDPTE_START | PRESENT_RW, GuestAddress(PML4_START))?;
    let mut pd = [0u64; 512];
    for gib in 0..IDENTITY_MAP_GIB {
        let pd_addr = PDE_START + gib * 0x1000;
        mem.write_obj(pd_addr | PRESENT_RW, GuestAddress(PDPTE_START + gib * 8))?;
        for (i, e) in pd.iter_mut().enumerate() {
            *e = ((gib << 30) + ((i as u64) << 21)) | PAGE_SIZE_2M | PRESENT_RW;
        }
        // One write per directory instead of 512 small ones.
        let bytes: Vec<u8> = pd.iter().flat_map(|e| e.to_le_bytes()).collect();
        mem.write_slice(&bytes, GuestAddress(pd_addr))?;
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    /// Walks the tables written into guest memory like the MMU would.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
        let pml4e: u64 = mem
            .read_obj(GuestAddress(cr3 + ((va >> 39) & 0x1ff) * 8))
            .ok()?;
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte: u64 = mem
            .read_obj(GuestAddress((pml4e & !0xfff) + ((va >> 30) & 0x1ff) * 8))
            .ok()?;
        if pdpte & 1 == 0 {
            return None;
        }
        let pde: u64 = mem
            .read_obj(GuestAddress((pdpte & !0xfff) + ((va >> 21) & 0x1ff) * 8))
            .ok()?;
        if pde & 1 == 0 || pde & PAGE_SIZE_2M == 0 {
            return None;
        }
        Some((pde & !0x1f_ffff & 0x000f_ffff_ffff_ffff) | (va & 0x1f_ffff))
    }

    #[test]
    fn first_four_gib_are_identity_mapped() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let cr3 = setup(&mem).unwrap();
        for va in [
            0u64,
            0x1000,
            0x10_0000,
            0x1234_5678,
            0xfee0_0000,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, cr3, va), Some(va), "va {va:#x}");
        }
        assert_eq!(translate(&mem, cr3, 4 << 30), None);
    }
}
