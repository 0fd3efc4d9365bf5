//! The guest's ACPI description, built with the acpi_tables crate: RSDP,
//! XSDT and RSDT (the same two tables: ACPI 1.0 readers such as
//! kvm-unit-tests follow the RSDT), FADT (with kvmini's PM1a block, PM
//! timer and reset register; 32- and 64-bit addresses), FACS, a DSDT
//! holding \_S5 so Linux's poweroff path writes the sleep command to a
//! port kvmini owns, and a MADT listing every vCPU's local APIC and the
//! IOAPIC. Tables are placed one after another from [`ACPI_START`].

use acpi_tables::aml;
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_START, APIC_START, EBDA_START, IOAPIC_START,
    PM1A_CNT_PORT, PM1A_EVT_PORT, PM_TMR_PORT,
};
use crate::devices::acpi_pm::S5_SLP_TYP;

const OEM_ID: [u8; 6] = *b"KVMINI";
const OEM_TABLE_ID: [u8; 8] = *b"KVMINIVM";
const OEM_REVISION: u32 = 1;
/// The SCI's ISA interrupt (never raised: kvmini has no ACPI events).
const SCI_IRQ: u16 = 9;
/// IAPC_BOOT_ARCH: no VGA, no MSI, no CMOS RTC; and, by leaving the 8042
/// bit clear, no keyboard controller to probe (reset still works through
/// port 0x64).
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 3) | (1 << 5);
/// MADT flag: a dual 8259 PIC is present too.
const MADT_PCAT_COMPAT: u32 = 1;
/// Offset of the MADT flags field (after the header and the LAPIC address).
const MADT_FLAGS_OFFSET: usize = 40;
const SDT_CHECKSUM_OFFSET: usize = 9;
/// RSDP fields patched to add the RSDT (ACPI 6.4, 5.2.5.3): its address,
/// the checksum of the first 20 bytes, and the extended checksum of all 36.
const RSDP_RSDT_OFFSET: usize = 16;
const RSDP_CHECKSUM_OFFSET: usize = 8;
const RSDP_EXT_CHECKSUM_OFFSET: usize = 32;

/// Errors writing the tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the ACPI tables do not fit below {EBDA_START:#x}..0x100000")]
    TooBig,
    #[error("cannot write the ACPI tables into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

fn bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// Recomputes an SDT's checksum after it was patched.
fn fix_checksum(table: &mut [u8]) {
    table[SDT_CHECKSUM_OFFSET] = 0;
    let sum = table.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    table[SDT_CHECKSUM_OFFSET] = 0u8.wrapping_sub(sum);
}

/// The DSDT: \_S5 and, in \_SB, each device's node (`devices`: AML bytes
/// from the device manager).
fn dsdt(devices: &[Vec<u8>]) -> Vec<u8> {
    let s5 = aml::Package::new(vec![&(S5_SLP_TYP as u8), &(S5_SLP_TYP as u8), &0u8, &0u8]);
    let mut body = bytes(&aml::Name::new("_S5_".into(), &s5));
    if !devices.is_empty() {
        body.extend(aml::Scope::raw("\\_SB_".into(), devices.concat()));
    }
    let mut sdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    sdt.append_slice(&body);
    sdt.as_slice().to_vec()
}

fn madt(cpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_START as u32),
    );
    for id in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    // ISA IRQs map 1:1 onto IOAPIC pins, as KVM's default routing does.
    madt.add_structure(IoApic::new(cpus, IOAPIC_START as u32, 0));
    let mut v = bytes(&madt);
    v[MADT_FLAGS_OFFSET..MADT_FLAGS_OFFSET + 4].copy_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    fix_checksum(&mut v);
    v
}

fn fadt(dsdt: u64, facs: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .firmware_ctrl_64(facs)
        .flag(Flags::Wbinvd)
        .flag(Flags::ResetRegSup)
        .flag(Flags::TmrValExt);
    // The 32-bit addresses too (the tables lie below 1 MiB), equal to the
    // 64-bit ones as the specification requires when both are set: ACPI
    // 1.0 readers take only these.
    f.dsdt = (dsdt as u32).into();
    f.firmware_ctrl = (facs as u32).into();
    f.pm_tmr_blk = u32::from(PM_TMR_PORT).into();
    f.pm_tmr_len = 4;
    f.x_pm_tmr_blk = GAS::new(
        AddressSpace::SystemIo,
        32,
        0,
        AccessSize::DwordAccess,
        u64::from(PM_TMR_PORT),
    );
    f.sci_int = SCI_IRQ.into();
    f.pm1a_evt_blk = u32::from(PM1A_EVT_PORT).into();
    f.pm1_evt_len = 4;
    f.pm1a_cnt_blk = u32::from(PM1A_CNT_PORT).into();
    f.pm1_cnt_len = 2;
    f.x_pm1a_evt_blk = GAS::new(
        AddressSpace::SystemIo,
        32,
        0,
        AccessSize::DwordAccess,
        u64::from(PM1A_EVT_PORT),
    );
    f.x_pm1a_cnt_blk = GAS::new(
        AddressSpace::SystemIo,
        16,
        0,
        AccessSize::WordAccess,
        u64::from(PM1A_CNT_PORT),
    );
    f.reset_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(ACPI_RESET_PORT),
    );
    f.reset_value = ACPI_RESET_VALUE;
    f.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    bytes(&f.finalize())
}

fn align(addr: u64, to: u64) -> u64 {
    addr.next_multiple_of(to)
}

/// Writes every table for a guest with `cpus` vCPUs and the devices whose
/// DSDT nodes are `devices`; returns the RSDP's address.
pub fn write_tables(mem: &GuestMemoryMmap, cpus: u8, devices: &[Vec<u8>]) -> Result<u64, Error> {
    let rsdp_addr = ACPI_START;
    let xsdt_addr = align(rsdp_addr + Rsdp::len() as u64, 16);
    // The XSDT and the RSDT list two tables: FADT and MADT.
    let xsdt_len = 36 + 2 * 8;
    let rsdt_addr = align(xsdt_addr + xsdt_len, 16);
    let rsdt_len = 36 + 2 * 4;
    let facs_addr = align(rsdt_addr + rsdt_len, 64);
    let facs = bytes(&FACS::new());
    let dsdt_addr = align(facs_addr + facs.len() as u64, 16);
    let dsdt = dsdt(devices);
    let fadt_addr = align(dsdt_addr + dsdt.len() as u64, 16);
    let fadt = fadt(dsdt_addr, facs_addr);
    let madt_addr = align(fadt_addr + fadt.len() as u64, 16);
    let madt = madt(cpus);
    if madt_addr + madt.len() as u64 > 0x10_0000 {
        return Err(Error::TooBig);
    }
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = bytes(&xsdt);
    debug_assert_eq!(xsdt.len() as u64, xsdt_len);
    let mut rsdt = Sdt::new(*b"RSDT", 36, 1, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for addr in [fadt_addr, madt_addr] {
        rsdt.append_slice(&(addr as u32).to_le_bytes());
    }
    let rsdt = rsdt.as_slice().to_vec();
    debug_assert_eq!(rsdt.len() as u64, rsdt_len);
    let mut rsdp = bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    rsdp[RSDP_RSDT_OFFSET..RSDP_RSDT_OFFSET + 4].copy_from_slice(&(rsdt_addr as u32).to_le_bytes());
    let checksum = |b: &[u8]| 0u8.wrapping_sub(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)));
    rsdp[RSDP_CHECKSUM_OFFSET] = 0;
    rsdp[RSDP_CHECKSUM_OFFSET] = checksum(&rsdp[..20]);
    rsdp[RSDP_EXT_CHECKSUM_OFFSET] = 0;
    rsdp[RSDP_EXT_CHECKSUM_OFFSET] = checksum(&rsdp);
    for (addr, data) in [
        (rsdp_addr, &rsdp),
        (xsdt_addr, &xsdt),
        (rsdt_addr, &rsdt),
        (facs_addr, &facs),
        (dsdt_addr, &dsdt),
        (fadt_addr, &fadt),
        (madt_addr, &madt),
    ] {
        mem.write_slice(data, GuestAddress(addr))
            .map_err(Error::Write)?;
    }
    Ok(rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn table(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let len = u32::from_le_bytes(read(mem, addr + 4, 4).try_into().unwrap());
        read(mem, addr, len as usize)
    }

    /// Follows RSDP -> XSDT -> tables as a guest does, checking checksums.
    fn tables(mem: &GuestMemoryMmap, rsdp: u64) -> Vec<Vec<u8>> {
        let r = read(mem, rsdp, 36);
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0);
        assert_eq!(sum(&r), 0);
        let xsdt_addr = u64::from_le_bytes(r[24..32].try_into().unwrap());
        let xsdt = table(mem, xsdt_addr);
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(sum(&xsdt), 0);
        xsdt[36..]
            .chunks(8)
            .map(|c| {
                let t = table(mem, u64::from_le_bytes(c.try_into().unwrap()));
                assert_eq!(sum(&t), 0, "checksum of {:?}", &t[..4]);
                t
            })
            .collect()
    }

    #[test]
    fn tables_chain_and_checksum() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let rsdp = write_tables(&mem, 4, &[]).unwrap();
        let t = tables(&mem, rsdp);
        assert_eq!(&t[0][..4], b"FACP");
        assert_eq!(&t[1][..4], b"APIC");
        // FADT: PM1a blocks and the reset register point at kvmini's ports.
        let fadt = &t[0];
        assert_eq!(u32::from_le_bytes(fadt[56..60].try_into().unwrap()), 0x600);
        assert_eq!(u32::from_le_bytes(fadt[64..68].try_into().unwrap()), 0x604);
        let reset_port = u64::from_le_bytes(fadt[120..128].try_into().unwrap());
        assert_eq!(reset_port, u64::from(ACPI_RESET_PORT));
        assert_eq!(fadt[128], ACPI_RESET_VALUE);
        // DSDT (through X_DSDT) holds \_S5.
        let dsdt_addr = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        let dsdt = table(&mem, dsdt_addr);
        assert_eq!(&dsdt[..4], b"DSDT");
        assert_eq!(sum(&dsdt), 0);
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        // FACS, through X_FIRMWARE_CTRL, 64-byte aligned.
        let facs_addr = u64::from_le_bytes(fadt[132..140].try_into().unwrap());
        assert_eq!(facs_addr % 64, 0);
        assert_eq!(read(&mem, facs_addr, 4), b"FACS");
    }

    /// What kvm-unit-tests does: scan 0xe0000..0x100000 in 16-byte steps
    /// for the RSDP, follow its 32-bit RSDT, find the FADT there, and read
    /// FIRMWARE_CTRL, DSDT and the PM timer block from their 32-bit fields.
    #[test]
    fn acpi_1_0_readers_find_the_tables_by_scanning_and_the_rsdt() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        write_tables(&mem, 2, &[]).unwrap();
        let rsdp = (0xe0000..0x100000u64)
            .step_by(16)
            .find(|&a| read(&mem, a, 8) == b"RSD PTR ")
            .expect("an RSDP in the BIOS area");
        let r = read(&mem, rsdp, 36);
        assert_eq!(sum(&r[..20]), 0);
        assert_eq!(sum(&r), 0);
        let rsdt_addr = u32::from_le_bytes(r[16..20].try_into().unwrap());
        let rsdt = table(&mem, u64::from(rsdt_addr));
        assert_eq!(&rsdt[..4], b"RSDT");
        assert_eq!(sum(&rsdt), 0);
        let entries: Vec<Vec<u8>> = rsdt[36..]
            .chunks(4)
            .map(|c| table(&mem, u64::from(u32::from_le_bytes(c.try_into().unwrap()))))
            .collect();
        // The same tables as the XSDT's.
        assert_eq!(entries, tables(&mem, rsdp));
        let fadt = &entries[0];
        assert_eq!(&fadt[..4], b"FACP");
        let u32_at = |o: usize| u32::from_le_bytes(fadt[o..o + 4].try_into().unwrap());
        assert_eq!(read(&mem, u64::from(u32_at(36)), 4), b"FACS");
        assert_eq!(read(&mem, u64::from(u32_at(40)), 4), b"DSDT");
        assert_eq!(u32_at(76), u32::from(PM_TMR_PORT), "PM_TMR_BLK");
        assert_eq!(fadt[91], 4, "PM_TMR_LEN");
        assert_ne!(u32_at(112) & (1 << 8), 0, "TMR_VAL_EXT: a 32-bit timer");
    }

    #[test]
    fn madt_lists_every_cpu_and_the_ioapic() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let rsdp = write_tables(&mem, 16, &[]).unwrap();
        let madt = &tables(&mem, rsdp)[1];
        assert_eq!(
            u32::from_le_bytes(madt[36..40].try_into().unwrap()),
            APIC_START as u32
        );
        let mut apic_ids = vec![];
        let mut ioapics = 0;
        let mut at = 44;
        while at < madt.len() {
            let (kind, len) = (madt[at], madt[at + 1] as usize);
            match kind {
                0 => apic_ids.push(madt[at + 3]),
                1 => ioapics += 1,
                _ => {}
            }
            at += len;
        }
        assert_eq!(apic_ids, (0..16).collect::<Vec<u8>>());
        assert_eq!(ioapics, 1);
    }

    #[test]
    fn device_nodes_land_in_the_system_bus_scope() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let node = bytes(&aml::Device::new(
            "V000".into(),
            vec![&aml::Name::new("_HID".into(), &"LNRO0005")],
        ));
        let rsdp = write_tables(&mem, 1, &[node.clone(), node.clone()]).unwrap();
        let fadt = &tables(&mem, rsdp)[0];
        let dsdt_addr = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        let dsdt = table(&mem, dsdt_addr);
        assert_eq!(sum(&dsdt), 0);
        let scope = dsdt
            .windows(5)
            .position(|w| w == b"\\_SB_")
            .expect("\\_SB_ scope");
        let nodes: Vec<usize> = (scope..dsdt.len())
            .filter(|&i| dsdt[i..].starts_with(&node))
            .collect();
        assert_eq!(nodes.len(), 2, "both nodes after the scope's name");
        // Without devices there is no scope at all.
        write_tables(&mem, 1, &[]).unwrap();
        let dsdt = table(&mem, dsdt_addr);
        assert!(!dsdt.windows(4).any(|w| w == b"_SB_"));
    }
}
