//! Multiboot kernels: the tiny guest's multiboot build (an ELF32, as
//! kvm-unit-tests' .flat files are) booted with modules and a command line
//! that the guest checks and prints (`mbinfo`), as the built-in image
//! (`--boot multiboot`) and as a file detected by content; the same image
//! under QEMU; and what is refused.

mod common;
use common::*;

/// The multiboot build of the tiny guest, as build.rs made it.
fn multiboot_elf() -> Vec<u8> {
    std::fs::read(concat!(env!("OUT_DIR"), "/kvmini-guest-multiboot.elf"))
        .expect("the multiboot tiny guest built by build.rs")
}

/// The tiny guest's module hash (guest/src/mbinfo.rs).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The `module N: ...` line mbinfo prints for `bytes` at `addr`.
fn module_line(i: usize, bytes: &[u8], addr: u64, string: &str) -> String {
    format!(
        "module {i}: {} bytes at {addr:#x}, page-aligned, fnv1a {:#x}, string \"{string}\"",
        bytes.len(),
        fnv1a(bytes)
    )
}

/// The address of module `i`'s line in `out`, checking it is page-aligned.
fn module_addr(out: &str, i: usize) -> u64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("module {i}: ")))
        .unwrap_or_else(|| panic!("no module {i} in:\n{out}"));
    let at = line.split(" bytes at 0x").nth(1).unwrap();
    let addr = u64::from_str_radix(at.split(',').next().unwrap(), 16).unwrap();
    assert_eq!(addr % 4096, 0, "{line}");
    addr
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn builtin_multiboot_guest_checks_its_modules_command_line_and_machine() {
    let dir = TempDir::new("mb-builtin");
    let env = b"NR_CPUS=2\nMEMSIZE=256\n".to_vec();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(dir.path("env"), &env).unwrap();
    std::fs::write(dir.path("data.bin"), &data).unwrap();
    let (envp, datap) = (dir.path("env"), dir.path("data.bin"));
    let (envp, datap) = (envp.to_str().unwrap(), datap.to_str().unwrap());
    let r = kvmini(&[
        "--boot",
        "multiboot",
        "--memory",
        "256M",
        "--cpus",
        "2",
        "--cmdline",
        "mbinfo first=1 second",
        "--initramfs",
        envp,
        "--module",
        &format!("{datap},name=data"),
    ]);
    r.assert_no_panic();
    assert_eq!(r.status, Some(0), "{}", r.stderr);
    let out = r.stdout_str();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..3],
        [
            "multiboot: magic ok, flags 0x24d, loader \"kvmini\"",
            // 639 KiB below the EBDA; from 1 MiB to the end of 256 MiB.
            "memory: lower 639 KiB, upper 261120 KiB, 3 map entries, 256 MiB RAM",
            "cmdline: kvmini-tiny-guest mbinfo first=1 second",
        ]
    );
    // The initramfs is the first module, right after the kernel; the
    // --module next, each page-aligned after the one before.
    let a0 = module_addr(&out, 0);
    let a1 = module_addr(&out, 1);
    assert!(a0 >= 0x10_0000 && a1 >= a0 + env.len() as u64, "{out}");
    assert_eq!(lines[3], module_line(0, &env, a0, envp));
    assert_eq!(
        lines[4],
        module_line(1, &data, a1, &format!("{datap} name=data"))
    );
    assert_eq!(lines[5], "fw_cfg: QEMU, 2 CPUs, 256 MiB");
    assert_eq!(
        lines[6],
        "acpi: RSDT FACP APIC, PM timer at port 0x60c ticking"
    );
    assert_eq!(lines.len(), 7, "{out}");
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn a_multiboot_file_is_detected_by_content_and_gets_its_path_as_argv0() {
    let dir = TempDir::new("mb-file");
    let kernel = dir.path("test.flat");
    std::fs::write(&kernel, multiboot_elf()).unwrap();
    let k = kernel.to_str().unwrap();
    let r = kvmini(&["--kernel", k, "--cmdline", "mbinfo", "--irqchip", "off"]);
    assert_eq!(r.status, Some(0), "{}", r.stderr);
    assert!(
        r.stdout_str().contains(&format!("\ncmdline: {k} mbinfo\n")),
        "{}",
        r.stdout_str()
    );
    // No --cmdline: the path alone (QEMU's -kernel without -append), so
    // the guest runs its default mode; with the irqchip (--kernel's
    // default) too.
    let r = kvmini(&["--kernel", k]);
    assert_eq!(r.status, Some(0), "{}", r.stderr);
    assert_eq!(
        r.stdout_str(),
        format!("kvmini tiny guest\nmemory: 128 MiB\ncmdline: {k}\n")
    );
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn the_elf64_build_is_not_multiboot_so_mbinfo_says_so() {
    // The default image carries the header blanked: booted the Linux way.
    let r = kvmini(&["--cmdline", "mbinfo"]);
    assert_eq!(r.status, Some(3), "{}", r.stderr);
    assert_eq!(r.stdout_str(), "mbinfo: not a multiboot boot\n");
}

#[test]
fn what_multiboot_refuses_is_bad_input() {
    let dir = TempDir::new("mb-refused");
    let elf64 = dir.path("vmlinux");
    std::fs::write(
        &elf64,
        std::fs::read(concat!(env!("OUT_DIR"), "/kvmini-guest.elf")).unwrap(),
    )
    .unwrap();
    let elf64 = elf64.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--kernel", elf64, "--boot", "multiboot"],
            "has no multiboot header, so --boot multiboot cannot start it",
        ),
        (
            &["--module", "/etc/hostname"],
            "--module /etc/hostname: modules are for multiboot kernels",
        ),
        (
            &["--boot", "multiboot", "--module", "/nonexistent/m"],
            "--module /nonexistent/m: cannot read the file",
        ),
        (&["--boot", "multiboot", "--module", ",x"], "--module"),
    ];
    for (args, needle) in cases {
        let r = kvmini(args);
        r.assert_no_panic();
        assert_eq!(r.status, Some(2), "{args:?}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
    }
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn a_module_that_does_not_fit_is_bad_input() {
    let dir = TempDir::new("mb-big");
    let big = dir.path("big");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(40 << 20).unwrap();
    let big = big.to_str().unwrap();
    let r = kvmini(&["--boot", "multiboot", "--memory", "32M", "--initramfs", big]);
    assert_eq!(r.status, Some(2), "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("--initramfs {big}: 41943040 bytes do not fit")),
        "{}",
        r.stderr
    );
}

/// QEMU boots the very same image with -kernel and -initrd, and the guest
/// sees the same command line, module and fw_cfg; QEMU's own conventions
/// differ where they should (its loader name and memory map; microvm's ACPI
/// has no RSDT, so the PM timer is checked under kvmini only).
#[test]
#[cfg_attr(
    not(all(kvm_usable, has_qemu)),
    ignore = "needs a usable /dev/kvm and qemu-system-x86_64 (scripts/install-deps installs it)"
)]
fn qemu_boots_the_same_multiboot_image() {
    let dir = TempDir::new("mb-qemu");
    let kernel = dir.path("test.flat");
    std::fs::write(&kernel, multiboot_elf()).unwrap();
    let env = b"NR_CPUS=1\n";
    std::fs::write(dir.path("env"), env).unwrap();
    let envp = dir.path("env");
    let (k, envp) = (kernel.to_str().unwrap(), envp.to_str().unwrap());
    let q = std::process::Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm",
            "-enable-kvm",
            "-nodefaults",
            "-no-user-config",
        ])
        .args(["-nographic", "-serial", "stdio", "-no-reboot"])
        .args([
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-m",
            "128M",
        ])
        .args(["-kernel", k, "-append", "mbinfo", "-initrd", envp])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run qemu-system-x86_64");
    let qout = String::from_utf8_lossy(&q.stdout).to_string();
    // isa-debug-exit: the guest's 0 is QEMU's 1.
    assert_eq!(
        q.status.code(),
        Some(1),
        "{qout}\n{}",
        String::from_utf8_lossy(&q.stderr)
    );
    let r = kvmini(&[
        "--kernel",
        k,
        "--cmdline",
        "mbinfo",
        "--initramfs",
        envp,
        "--debug-exit-status",
        "qemu",
    ]);
    assert_eq!(r.status, Some(1), "{}", r.stderr);
    let kout = r.stdout_str();
    for out in [&qout, &kout] {
        assert!(out.contains(&format!("\ncmdline: {k} mbinfo\n")), "{out}");
        let a = module_addr(out, 0);
        assert!(out.contains(&module_line(0, env, a, envp)), "{out}");
        assert!(out.contains("\nfw_cfg: QEMU, 1 CPUs, 128 MiB\n"), "{out}");
    }
    assert!(
        kout.contains("\nacpi: RSDT FACP APIC, PM timer at port 0x60c ticking\n"),
        "{kout}"
    );
    assert!(qout.contains("loader \"qemu\""), "{qout}");
    assert!(kout.contains("loader \"kvmini\""), "{kout}");
}

/// A multiboot kernel with the a.out kludge, linked low (32 KiB, where
/// kvm-unit-tests' realmode test links): a header, then `mov al, 42;
/// out 0xf4, al; hlt` at its entry, right after the header.
fn low_aout_kernel() -> Vec<u8> {
    const BASE: u32 = 0x8000;
    let flags: u32 = 1 << 16;
    let magic: u32 = 0x1bad_b002;
    let mut k = Vec::new();
    for word in [
        magic,
        flags,
        0u32.wrapping_sub(magic.wrapping_add(flags)),
        BASE,      // header_addr
        BASE,      // load_addr
        0,         // load_end_addr: the whole file
        0,         // bss_end_addr: no bss
        BASE + 32, // entry_addr
    ] {
        k.extend_from_slice(&word.to_le_bytes());
    }
    k.extend_from_slice(&[0xb0, 42, 0xe6, 0xf4, 0xf4]);
    k
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn an_aout_kludge_kernel_linked_in_low_memory_boots() {
    let dir = TempDir::new("mb-low");
    let kernel = dir.path("low.bin");
    std::fs::write(&kernel, low_aout_kernel()).unwrap();
    let k = kernel.to_str().unwrap();
    for irqchip in ["off", "on"] {
        let r = kvmini(&["--kernel", k, "--irqchip", irqchip]);
        r.assert_no_panic();
        assert_eq!(r.status, Some(42), "--irqchip {irqchip}: {}", r.stderr);
    }
    // Over the multiboot information's region it is refused, before boot.
    let mut over = low_aout_kernel();
    for at in [12, 16] {
        over[at..at + 4].copy_from_slice(&0x3_f000u32.to_le_bytes());
    }
    over[28..32].copy_from_slice(&(0x3_f000u32 + 32).to_le_bytes());
    std::fs::write(&kernel, over).unwrap();
    let r = kvmini(&["--kernel", k]);
    assert_eq!(r.status, Some(2), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("where kvmini writes the multiboot information"),
        "{}",
        r.stderr
    );
}
