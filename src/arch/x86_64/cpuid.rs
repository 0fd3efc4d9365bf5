//! CPUID as each vCPU sees it: what KVM supports, with the topology and
//! APIC ID of that vCPU written in.

use kvm_bindings::CpuId;

/// Leaf 1 ECX bit 31: running under a hypervisor.
const HYPERVISOR_BIT: u32 = 1 << 31;
/// Leaf 1 EDX bit 28: more than one logical processor per package.
const HTT_BIT: u32 = 1 << 28;
/// Leaf 0xb level types.
const LEVEL_TYPE_THREAD: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Number of bits needed to number `cpus` logical processors.
fn id_bits(cpus: u8) -> u32 {
    let n = u32::from(cpus.max(1));
    32 - (n - 1).leading_zeros()
}

/// Adjusts `cpuid` (from KVM_GET_SUPPORTED_CPUID) for vCPU `id` of `cpus`:
/// one package, one thread per core, `cpus` cores.
pub fn adjust(cpuid: &mut CpuId, id: u8, cpus: u8) {
    let apic_id = u32::from(id);
    let count = u32::from(cpus);
    for e in cpuid.as_mut_slice() {
        match e.function {
            0x1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | (count << 16);
                e.ecx |= HYPERVISOR_BIT;
                if cpus > 1 {
                    e.edx |= HTT_BIT;
                } else {
                    e.edx &= !HTT_BIT;
                }
            }
            0x4 => {
                // Cores per package - 1 in bits 31..26; no sharing of caches
                // between threads (one thread per core).
                e.eax = (e.eax & 0x03ff_ffff) | ((count - 1) << 26);
                e.eax &= !(0xfff << 14);
            }
            0xb | 0x1f => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_TYPE_THREAD << 8) | e.index;
                    }
                    1 => {
                        e.eax = id_bits(cpus);
                        e.ebx = count;
                        e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            0x8000_0008 => {
                e.ecx = (e.ecx & !0xff) | (count - 1);
            }
            0x8000_001e => {
                e.eax = apic_id;
                e.ebx = (e.ebx & !0xff) | apic_id;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn each_vcpu_gets_its_apic_id_and_the_count() {
        let mut c = CpuId::from_entries(&[leaf(1, 0), leaf(0xb, 0), leaf(0xb, 1)]).unwrap();
        adjust(&mut c, 3, 4);
        let s = c.as_slice();
        assert_eq!(s[0].ebx >> 24, 3);
        assert_eq!((s[0].ebx >> 16) & 0xff, 4);
        assert_ne!(s[0].ecx & HYPERVISOR_BIT, 0);
        assert_ne!(s[0].edx & HTT_BIT, 0);
        assert_eq!(s[1].edx, 3);
        assert_eq!((s[2].eax, s[2].ebx), (2, 4));
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(16), 4);
        assert_eq!(id_bits(17), 5);
    }
}
