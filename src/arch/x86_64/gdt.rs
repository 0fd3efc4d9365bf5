//! The boot GDT and the segment descriptors derived from it.

use kvm_bindings::kvm_segment;

/// Index of the 64-bit code segment (selector 0x10, as Linux expects).
pub const CODE64: usize = 2;
/// Index of the data segment (selector 0x18).
pub const DATA: usize = 3;
/// Index of the 32-bit code segment used for PVH entry (selector 0x08).
pub const CODE32: usize = 1;
/// Index of the TSS placeholder (selector 0x20).
pub const TSS: usize = 4;

/// Packs a segment descriptor from its flags, base and limit.
pub const fn entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, 32-bit code, 64-bit code, data, TSS.
pub fn boot_gdt() -> [u64; 5] {
    [
        0,
        entry(0xc09b, 0, 0xfffff), // 32-bit code, 4 GiB flat
        entry(0xa09b, 0, 0xfffff), // 64-bit code (L bit)
        entry(0xc093, 0, 0xfffff), // data, 4 GiB flat
        entry(0x808b, 0, 0xfffff), // busy 32-bit TSS
    ]
}

/// Decodes descriptor `index` of `gdt` into the form KVM's sregs want.
pub fn segment(gdt: &[u64], index: usize) -> kvm_segment {
    let e = gdt[index];
    let g = ((e >> 55) & 1) as u8;
    let raw_limit = (((e >> 32) & 0x000f_0000) | (e & 0xffff)) as u32;
    kvm_segment {
        base: ((e >> 16) & 0x00ff_ffff) | ((e >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: (index * 8) as u16,
        type_: ((e >> 40) & 0xf) as u8,
        present: ((e >> 47) & 1) as u8,
        dpl: ((e >> 45) & 3) as u8,
        db: ((e >> 54) & 1) as u8,
        s: ((e >> 44) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        g,
        avl: ((e >> 52) & 1) as u8,
        unusable: u8::from(((e >> 47) & 1) == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code64_is_long_mode_present_and_flat() {
        let s = segment(&boot_gdt(), CODE64);
        assert_eq!(s.selector, 0x10);
        assert_eq!((s.l, s.db, s.present, s.s, s.g), (1, 0, 1, 1, 1));
        assert_eq!(s.type_, 0xb);
        assert_eq!(s.limit, 0xffff_ffff);
        assert_eq!(s.base, 0);
    }

    #[test]
    fn data_and_code32_are_32_bit_flat() {
        let gdt = boot_gdt();
        let d = segment(&gdt, DATA);
        assert_eq!((d.selector, d.type_, d.db, d.l), (0x18, 3, 1, 0));
        let c = segment(&gdt, CODE32);
        assert_eq!((c.selector, c.type_, c.db, c.l), (0x08, 0xb, 1, 0));
    }

    #[test]
    fn entry_packs_base_and_limit() {
        let e = entry(0x808b, 0x1234_5678, 0xabcde);
        let s = segment(&[e], 0);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.type_, 0xb);
        assert_eq!(s.g, 1);
        assert_eq!(s.limit, 0xabcd_efff);
    }
}
