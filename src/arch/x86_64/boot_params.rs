//! The structures a kernel reads at entry: Linux's boot_params ("zero
//! page") for the 64-bit boot protocol, or hvm_start_info for PVH entry.
//! Both come from linux-loader; this module only fills them in.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::layout::{CMDLINE_START, PVH_INFO_START, PVH_MEMMAP_START, ZERO_PAGE_START};
use crate::memory::E820Entry;

/// "HdrS", the setup header magic.
const HDR_MAGIC: u32 = 0x5372_6448;
/// boot_flag value every valid setup header carries.
const BOOT_FLAG: u16 = 0xaa55;
/// type_of_loader: "undefined" loader, as other VMMs report.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// loadflags bit: the protected-mode kernel is loaded at 1 MiB.
const LOADED_HIGH: u8 = 0x01;
/// loadflags bit: heap_end_ptr is valid.
const CAN_USE_HEAP: u8 = 0x80;
/// PVH start_info magic.
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

/// Errors writing boot structures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the e820 map has {0} entries, more than boot_params holds")]
    TooManyE820Entries(usize),
    #[error("cannot write the boot parameters into guest memory")]
    Write(#[source] linux_loader::configurator::Error),
}

/// What the zero page tells the kernel.
pub struct LinuxBoot<'a> {
    /// The kernel's own setup header (bzImage), if it has one.
    pub header: Option<setup_header>,
    pub e820: &'a [E820Entry],
    /// Command line length including the NUL.
    pub cmdline_size: u32,
    /// Initramfs address and size.
    pub initramfs: Option<(u64, u64)>,
    /// Guest-physical address of the ACPI RSDP.
    pub rsdp: Option<u64>,
}

/// Builds the zero page.
pub fn linux_boot_params(boot: &LinuxBoot) -> Result<boot_params, Error> {
    let mut params = boot_params::default();
    if let Some(hdr) = boot.header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDR_MAGIC;
    params.hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.ext_cmd_line_ptr = (CMDLINE_START >> 32) as u32;
    params.hdr.cmdline_size = boot.cmdline_size;
    if let Some((addr, size)) = boot.initramfs {
        params.hdr.ramdisk_image = addr as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    if let Some(rsdp) = boot.rsdp {
        params.acpi_rsdp_addr = rsdp;
    }
    if boot.e820.len() > params.e820_table.len() {
        return Err(Error::TooManyE820Entries(boot.e820.len()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(boot.e820) {
        slot.addr = e.addr;
        slot.size = e.size;
        slot.r#type = e.kind;
    }
    params.e820_entries = boot.e820.len() as u8;
    Ok(params)
}

/// Writes the zero page at [`ZERO_PAGE_START`].
pub fn write_linux(mem: &GuestMemoryMmap, params: &boot_params) -> Result<(), Error> {
    let bp = BootParams::new(params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams(&bp, mem).map_err(Error::Write)
}

/// Builds and writes the PVH start_info, its memory map and module list.
/// Returns the address to pass in rbx.
pub fn write_pvh(
    mem: &GuestMemoryMmap,
    e820: &[E820Entry],
    initramfs: Option<(u64, u64)>,
    rsdp: Option<u64>,
) -> Result<u64, Error> {
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let memmap_bytes = (memmap.len() * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
    let modlist_addr = PVH_MEMMAP_START + memmap_bytes;
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        rsdp_paddr: rsdp.unwrap_or(0),
        nr_modules: u32::from(initramfs.is_some()),
        modlist_paddr: if initramfs.is_some() { modlist_addr } else { 0 },
        ..Default::default()
    };
    let mut bp = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    bp.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if let Some((paddr, size)) = initramfs {
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        bp.set_modules(&[module], GuestAddress(modlist_addr));
    }
    PvhBootConfigurator::write_bootparams(&bp, mem).map_err(Error::Write)?;
    Ok(PVH_INFO_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{e820_map, E820_RAM};
    use vm_memory::{Address, Bytes, GuestMemoryMmap};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn zero_page_round_trips_through_guest_memory() {
        let e820 = e820_map(128 << 20);
        let params = linux_boot_params(&LinuxBoot {
            header: None,
            e820: &e820,
            cmdline_size: 6,
            initramfs: Some((0x700_0000, 0x1234)),
            rsdp: Some(0xe0000),
        })
        .unwrap();
        let m = mem();
        write_linux(&m, &params).unwrap();
        // Read it back at the offsets the boot protocol documents.
        let base = GuestAddress(ZERO_PAGE_START);
        let read_u32 = |off: u64| m.read_obj::<u32>(base.unchecked_add(off)).unwrap();
        assert_eq!(read_u32(0x228), CMDLINE_START as u32);
        assert_eq!(read_u32(0x218), 0x700_0000);
        assert_eq!(read_u32(0x21c), 0x1234);
        assert_eq!(read_u32(0x202), HDR_MAGIC);
        assert_eq!(
            m.read_obj::<u64>(base.unchecked_add(0x070)).unwrap(),
            0xe0000
        );
        let n = m.read_obj::<u8>(base.unchecked_add(0x1e8)).unwrap();
        assert_eq!(n as usize, e820.len());
        for (i, e) in e820.iter().enumerate() {
            let at = base.unchecked_add(0x2d0 + 20 * i as u64);
            assert_eq!(m.read_obj::<u64>(at).unwrap(), e.addr);
            assert_eq!(m.read_obj::<u64>(at.unchecked_add(8)).unwrap(), e.size);
            assert_eq!(m.read_obj::<u32>(at.unchecked_add(16)).unwrap(), e.kind);
        }
    }

    #[test]
    fn pvh_start_info_round_trips() {
        let e820 = e820_map(64 << 20);
        let m = mem();
        let addr = write_pvh(&m, &e820, Some((0x200_0000, 77)), None).unwrap();
        let info: hvm_start_info = m.read_obj(GuestAddress(addr)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.memmap_entries as usize, e820.len());
        let last: hvm_memmap_table_entry = m
            .read_obj(GuestAddress(
                info.memmap_paddr + 24 * (e820.len() as u64 - 1),
            ))
            .unwrap();
        assert_eq!(last.type_, E820_RAM);
        assert_eq!(last.addr + last.size, 64 << 20);
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x200_0000, 77));
    }
}
