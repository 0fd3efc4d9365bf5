//! Bad invocations and bad input files: each gets one line on stderr that
//! names the flag or file and the problem, the documented status, and no
//! panic. Cases that fail before KVM is touched need no /dev/kvm.

mod common;
use common::*;
use std::path::Path;

/// The tiny guest's ELF, as embedded in kvmini (the build puts it here).
fn tiny_guest_elf() -> Vec<u8> {
    std::fs::read(concat!(env!("OUT_DIR"), "/kvmini-guest.elf"))
        .expect("the tiny guest ELF built by build.rs")
}

/// Asserts a one-line error containing every `needle`, and `status`.
#[track_caller]
fn assert_error(r: &Run, status: i32, needles: &[&str]) {
    r.assert_no_panic();
    assert_eq!(r.status, Some(status), "stderr: {}", r.stderr);
    assert_eq!(
        r.stderr.lines().count(),
        1,
        "expected exactly one line on stderr, got:\n{}",
        r.stderr
    );
    for n in needles {
        assert!(r.stderr.contains(n), "stderr lacks {n:?}: {}", r.stderr);
    }
    assert_says_each_cause_once(&r.stderr);
    assert!(r.stdout.is_empty(), "nothing should reach stdout");
}

/// No part of an error line (between ": ") comes twice: a cause that an
/// error already quotes is not repeated by the chain printed after it.
#[track_caller]
fn assert_says_each_cause_once(line: &str) {
    let parts: Vec<&str> = line.trim().split(": ").map(str::trim).collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(!parts[i + 1..].contains(p), "{p:?} is said twice: {line}");
    }
}

#[test]
fn an_error_says_its_cause_once() {
    // vm-memory's error quotes its OS error, which is also its source.
    assert_error(
        &under_address_limit(&["--memory", "4G"]),
        2,
        &["--memory", "Cannot allocate memory"],
    );
    // linux-loader's errors quote each other down the chain.
    assert_error(
        &kvmini(&["--kernel", "/bin/true"]),
        2,
        &["--kernel /bin/true"],
    );
}

fn write(dir: &TempDir, name: &str, bytes: &[u8]) -> String {
    let p = dir.path(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

// ---- flags ----------------------------------------------------------------

#[test]
fn unknown_flag() {
    assert_error(&kvmini(&["--frobnicate"]), 2, &["--frobnicate"]);
}

#[test]
fn flag_missing_its_value() {
    assert_error(&kvmini(&["--kernel"]), 2, &["--kernel"]);
}

#[test]
fn memory_zero() {
    assert_error(
        &kvmini(&["--memory", "0"]),
        2,
        &["--memory", "greater than zero"],
    );
}

#[test]
fn memory_garbage() {
    assert_error(
        &kvmini(&["--memory", "lots"]),
        2,
        &["--memory", "not a size"],
    );
}

#[test]
fn memory_overflowing_u64() {
    assert_error(
        &kvmini(&["--memory", "99999999T"]),
        2,
        &["--memory", "too large"],
    );
}

#[test]
fn cpus_zero() {
    assert_error(&kvmini(&["--cpus", "0"]), 2, &["--cpus", "out of range"]);
}

#[test]
fn cpus_above_maximum() {
    assert_error(&kvmini(&["--cpus", "65"]), 2, &["--cpus", "out of range"]);
}

#[test]
fn cpus_garbage() {
    assert_error(&kvmini(&["--cpus", "two"]), 2, &["--cpus", "not a number"]);
}

#[test]
fn timeout_garbage() {
    assert_error(&kvmini(&["--timeout", "soon"]), 2, &["--timeout"]);
}

#[test]
fn timeout_too_long_to_represent() {
    for huge in ["9300000000000000000", "4000000000", "99999999h"] {
        assert_error(&kvmini(&["--timeout", huge]), 2, &["--timeout", "too long"]);
    }
}

#[test]
fn clap_errors_keep_what_they_say_on_one_line() {
    // A tip, the missing argument, the possible values: all on the line.
    assert_error(
        &kvmini(&["--memroy", "512M"]),
        2,
        &["'--memroy'", "a similar argument exists: '--memory'"],
    );
    assert_error(
        &kvmini(&["--serial-timestamps"]),
        2,
        &[
            "required arguments were not provided",
            "--serial-log <PATH>",
        ],
    );
    assert_error(
        &kvmini(&["--irqchip", "maybe"]),
        2,
        &["'maybe'", "possible values: auto, on, off"],
    );
}

#[test]
fn timeout_unknown_unit() {
    assert_error(
        &kvmini(&["--timeout", "5days"]),
        2,
        &["--timeout", "unknown unit"],
    );
}

#[test]
fn serial_garbage() {
    assert_error(
        &kvmini(&["--serial", "tcp:80"]),
        2,
        &["--serial", "not a back end"],
    );
}

#[test]
fn on_reboot_garbage() {
    assert_error(&kvmini(&["--on-reboot", "explode"]), 2, &["--on-reboot"]);
}

#[test]
fn boot_protocol_garbage() {
    assert_error(&kvmini(&["--boot", "efi"]), 2, &["--boot"]);
}

// ---- files ----------------------------------------------------------------

#[test]
fn kernel_missing() {
    let r = kvmini(&["--kernel", "/nonexistent/vmlinux"]);
    assert_error(
        &r,
        2,
        &[
            "--kernel /nonexistent/vmlinux",
            "cannot read",
            "No such file",
        ],
    );
}

#[test]
fn kernel_is_a_directory() {
    let dir = TempDir::new("kdir");
    let d = dir.0.display().to_string();
    assert_error(&kvmini(&["--kernel", &d]), 2, &[&d, "is a directory"]);
}

#[test]
fn kernel_empty() {
    let dir = TempDir::new("kempty");
    let k = write(&dir, "empty", b"");
    assert_error(&kvmini(&["--kernel", &k]), 2, &[&k, "empty"]);
}

#[test]
fn kernel_random_bytes() {
    let dir = TempDir::new("krandom");
    let mut x = 0x1234_5678_9abc_def0u64;
    let bytes: Vec<u8> = (0..65536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let k = write(&dir, "random", &bytes);
    assert_error(&kvmini(&["--kernel", &k]), 2, &[&k, "not a kernel image"]);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn kernel_truncated_elf() {
    let dir = TempDir::new("ktrunc");
    let elf = tiny_guest_elf();
    for (len, says) in [
        (10, "invalid or truncated"),
        (100, "beyond the end of the file"),
        (1000, "truncated image"),
    ] {
        let k = write(&dir, &format!("trunc{len}"), &elf[..len]);
        assert_error(&kvmini(&["--kernel", &k]), 2, &[&k, says]);
    }
}

#[test]
fn kernel_elf_for_another_architecture() {
    let dir = TempDir::new("karch");
    let mut elf = tiny_guest_elf();
    elf[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    let k = write(&dir, "arm64", &elf);
    assert_error(&kvmini(&["--kernel", &k]), 2, &[&k, "another architecture"]);
}

#[test]
fn kernel_32_bit_elf() {
    let dir = TempDir::new("k32");
    let mut elf = tiny_guest_elf();
    elf[4] = 1; // ELFCLASS32
    let k = write(&dir, "elf32", &elf);
    assert_error(&kvmini(&["--kernel", &k]), 2, &[&k, "32-bit"]);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn kernel_bzimage_with_corrupted_header() {
    let dir = TempDir::new("kbz");
    // A header that passes kvmini's own checks (validate.rs) but whose
    // boot_flag (0x1fe) is zero instead of 0xaa55: linux-loader's refusal.
    let mut bz = bzimage(0x020f, 1, 5 * 512 + (1 << 20));
    bz[0x1fe] = 0;
    let k = write(&dir, "bzImage", &bz);
    assert_error(
        &kvmini(&["--kernel", &k]),
        2,
        &[&k, "invalid or truncated BzImage"],
    );
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn kernel_that_does_not_fit_in_memory() {
    let dir = TempDir::new("kbig");
    let mut elf = tiny_guest_elf();
    // Move the first program header's physical address, and the entry
    // with it, to 100 MiB.
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let paddr = u64::from_le_bytes(elf[phoff + 0x18..phoff + 0x20].try_into().unwrap());
    let entry = u64::from_le_bytes(elf[0x18..0x20].try_into().unwrap());
    let moved = 100u64 << 20;
    elf[phoff + 0x18..phoff + 0x20].copy_from_slice(&moved.to_le_bytes());
    elf[0x18..0x20].copy_from_slice(&(entry - paddr + moved).to_le_bytes());
    let k = write(&dir, "high", &elf);
    assert_error(
        &kvmini(&["--kernel", &k, "--memory", "32M"]),
        2,
        &[&k, "beyond the guest's", "--memory"],
    );
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn kernel_entry_below_1m() {
    let dir = TempDir::new("kentry");
    let mut elf = tiny_guest_elf();
    elf[0x18..0x20].copy_from_slice(&0x1000u64.to_le_bytes()); // e_entry
    let k = write(&dir, "lowentry", &elf);
    assert_error(
        &kvmini(&["--kernel", &k]),
        2,
        &[&k, "entry point 0x1000 lies outside every segment"],
    );
}

/// A bzImage whose setup header says boot protocol `version`, `xloadflags`,
/// setup_sects 4 and a kernel of 1 MiB (syssize); `len` bytes long.
fn bzimage(version: u16, xloadflags: u16, len: usize) -> Vec<u8> {
    let mut bz = vec![0u8; len];
    bz[0x1f1] = 4;
    bz[0x1f4..0x1f8].copy_from_slice(&((1u32 << 20) / 16).to_le_bytes());
    bz[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    bz[0x206..0x208].copy_from_slice(&version.to_le_bytes());
    bz[0x211] = 1; // loadflags: LOADED_HIGH
    bz[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
    bz
}

#[test]
fn bzimages_kvmini_cannot_boot_are_refused_before_the_vm_starts() {
    let dir = TempDir::new("kbzrules");
    let full = 5 * 512 + (1 << 20);
    for (name, bz, says) in [
        (
            "short",
            bzimage(0x020f, 1, 4096),
            "truncated: its setup header says",
        ),
        ("cut", bzimage(0x020f, 1, full - 1), "truncated"),
        ("bit32", bzimage(0x020f, 0, full), "a 32-bit kernel"),
        (
            "old",
            bzimage(0x0206, 1, full),
            "boot protocol 2.06 is older than 2.12",
        ),
        (
            "header",
            bzimage(0x020f, 1, 0x240),
            "ends inside its setup header",
        ),
    ] {
        let k = write(&dir, name, &bz);
        assert_error(
            &kvmini(&["--kernel", &k]),
            2,
            &[&k, "BzImage image refused", says],
        );
    }
    // The first 64 KiB of the host's own kernel, where there is one.
    if let Some(real) = std::fs::read_dir("/boot")
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("vmlinuz"))
        .and_then(|p| std::fs::read(p).ok())
    {
        let k = write(&dir, "vmlinuz-64k", &real[..real.len().min(65536)]);
        assert_error(&kvmini(&["--kernel", &k]), 2, &[&k, "truncated"]);
    }
}

/// The tiny guest's ELF with program header `i`'s field at `off` set.
fn with_phdr_field(elf: &mut [u8], i: usize, off: usize, v: u64) {
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let at = phoff + i * 56 + off;
    elf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn elf_kernels_that_break_the_layout_are_refused_before_the_vm_starts() {
    let dir = TempDir::new("kelfrules");
    let base = tiny_guest_elf();
    let phoff = u64::from_le_bytes(base[0x20..0x28].try_into().unwrap()) as usize;
    let entry = u64::from_le_bytes(base[0x18..0x20].try_into().unwrap());
    let paddr = u64::from_le_bytes(base[phoff + 0x18..phoff + 0x20].try_into().unwrap());
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    // No program headers at all.
    let mut e = base.clone();
    e[0x38..0x3a].copy_from_slice(&0u16.to_le_bytes());
    cases.push(("nophdr", e, "no program headers"));
    // A segment (and the entry) over kvmini's low-memory boot data.
    let mut e = base.clone();
    with_phdr_field(&mut e, 0, 0x18, 0x7000);
    e[0x18..0x20].copy_from_slice(&(entry - paddr + 0x7000).to_le_bytes());
    cases.push(("low", e, "below 1 MiB"));
    // More bytes in the file than in memory.
    let mut e = base.clone();
    let memsz = u64::from_le_bytes(base[phoff + 0x28..phoff + 0x30].try_into().unwrap());
    with_phdr_field(&mut e, 0, 0x20, memsz + 1);
    cases.push(("filesz", e, "in the file but only"));
    // In the MMIO hole.
    let mut e = base.clone();
    with_phdr_field(&mut e, 0, 0x18, 0xc000_0000);
    e[0x18..0x20].copy_from_slice(&(entry - paddr + 0xc000_0000).to_le_bytes());
    cases.push(("hole", e, "MMIO hole"));
    // The PVH entry outside every segment: its Xen note
    // (namesz 4, descsz, type 18 XEN_ELFNOTE_PHYS32_ENTRY, "Xen\0", entry).
    let mut e = base.clone();
    let note = e
        .windows(16)
        .position(|w| w[..4] == [4, 0, 0, 0] && w[8..12] == [18, 0, 0, 0] && &w[12..] == b"Xen\0")
        .expect("the tiny guest has a PVH note");
    e[note + 16..note + 20].copy_from_slice(&0x1000u32.to_le_bytes());
    cases.push(("pvh", e, "the PVH entry point 0x1000 lies outside"));
    for (name, elf, says) in cases {
        let k = write(&dir, name, &elf);
        assert_error(
            &kvmini(&["--kernel", &k]),
            2,
            &[&k, "Elf image refused", says],
        );
    }
}

#[test]
fn initramfs_missing() {
    let r = kvmini(&["--initramfs", "/nonexistent/initrd"]);
    assert_error(&r, 2, &["--initramfs /nonexistent/initrd", "cannot read"]);
}

#[test]
fn initramfs_is_a_directory() {
    let dir = TempDir::new("idir");
    let d = dir.0.display().to_string();
    assert_error(
        &kvmini(&["--initramfs", &d]),
        2,
        &["--initramfs", "is a directory"],
    );
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn initramfs_larger_than_memory() {
    let dir = TempDir::new("ibig");
    let p = dir.path("huge.cpio");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(64 << 20).unwrap(); // sparse: costs no disk
    let i = p.display().to_string();
    assert_error(
        &kvmini(&["--initramfs", &i, "--memory", "32M"]),
        2,
        &[&i, "do not fit", "--memory"],
    );
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn memory_more_than_the_host_can_map() {
    assert_error(
        &under_address_limit(&["--memory", "4G"]),
        2,
        &["--memory", "cannot map"],
    );
}

/// kvmini under `ulimit -v 1000000` (about 1 GiB of address space).
fn under_address_limit(args: &[&str]) -> Run {
    std::process::Command::new("sh")
        .args(["-c", "ulimit -v 1000000 && exec \"$0\" \"$@\"", KVMINI])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
        .into()
}

#[test]
fn memory_sizes_kvm_would_refuse_are_bad_input() {
    for (size, says) in [
        ("17000000", "17000000 bytes is not a whole number of 4 KiB pages"),
        ("16777217", "not a whole number of 4 KiB pages"),
        ("64T", "64T is above the maximum of 8T"),
        ("9T", "above the maximum of 8T"),
        ("512", "512 bytes is below the minimum of 16M (a bare number is bytes: did you mean --memory 512M?)"),
        ("15M", "15M is below the minimum of 16M"),
    ] {
        assert_error(&kvmini(&["--memory", size]), 2, &["--memory: ", says]);
    }
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn memory_below_minimum() {
    assert_error(
        &kvmini(&["--memory", "1M"]),
        2,
        &["--memory", "below the minimum"],
    );
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn cmdline_over_the_limit() {
    let long = "x".repeat(3000);
    assert_error(
        &kvmini(&["--cmdline", &long]),
        2,
        &["--cmdline", "over the kernel's limit"],
    );
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn cmdline_not_ascii() {
    assert_error(
        &kvmini(&["--cmdline", "caf\u{e9}"]),
        2,
        &["--cmdline", "non-printable"],
    );
}

#[test]
fn serial_file_in_missing_directory() {
    let r = kvmini(&["--serial", "file=/nonexistent/dir/console.log"]);
    assert_error(
        &r,
        2,
        &["--serial file=/nonexistent/dir/console.log", "cannot open"],
    );
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn pvh_requested_for_a_kernel_without_the_note() {
    let dir = TempDir::new("nopvh");
    let mut elf = tiny_guest_elf();
    // Turn every PT_NOTE into PT_NULL: the PVH note disappears.
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let phnum = u16::from_le_bytes([elf[0x38], elf[0x39]]) as usize;
    for i in 0..phnum {
        let at = phoff + i * 56;
        if elf[at..at + 4] == 4u32.to_le_bytes() {
            elf[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
        }
    }
    let k = write(&dir, "nopvh", &elf);
    assert_error(
        &kvmini(&["--kernel", &k, "--boot", "pvh"]),
        2,
        &[&k, "no PVH entry"],
    );
}

// ---- KVM ------------------------------------------------------------------

/// /dev/kvm replaced by /dev/null in a private mount namespace.
#[test]
fn kvm_not_openable_is_status_3() {
    if !Path::new("/usr/bin/unshare").exists() {
        panic!("this test needs unshare (util-linux) to hide /dev/kvm in a mount namespace");
    }
    let script = format!(
        "mount --bind /dev/null /dev/kvm 2>/dev/null || touch /dev/kvm && mount --bind /dev/null /dev/kvm; exec {KVMINI}"
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let r: Run = out.into();
    if r.stderr.contains("unshare failed") || r.stderr.contains("Operation not permitted") {
        panic!(
            "cannot create a mount namespace here (needs root): {}",
            r.stderr
        );
    }
    assert_error(&r, 3, &["/dev/kvm"]);
}

#[test]
fn smp_without_irqchip() {
    let r = kvmini(&["--cpus", "2", "--irqchip", "off"]);
    assert_error(&r, 2, &["--cpus 2", "irqchip"]);
}

#[test]
fn irqchip_garbage() {
    assert_error(&kvmini(&["--irqchip", "maybe"]), 2, &["--irqchip"]);
}

#[test]
fn one_file_for_two_outputs_or_an_output_over_an_input_is_refused() {
    let dir = TempDir::new("samefile");
    let kernel = write(&dir, "kernel", &tiny_guest_elf());
    let log = dir.path("s.log").display().to_string();
    let same_log = dir.path(".").join("s.log").display().to_string();
    let file = |p: &str| format!("file={p}");
    for (args, needle) in [
        (
            vec![
                "--serial".to_string(),
                file(&log),
                "--serial-log".into(),
                same_log.clone(),
            ],
            "--serial file=",
        ),
        (
            vec![
                "--serial".into(),
                file(&log),
                "--serial2".into(),
                file(&same_log),
            ],
            "--serial2 file=",
        ),
        (
            vec![
                "--kernel".into(),
                kernel.clone(),
                "--serial-log".into(),
                kernel.clone(),
            ],
            "--kernel",
        ),
        (
            vec![
                "--kernel".into(),
                kernel.clone(),
                "--serial2".into(),
                file(&kernel),
            ],
            "--kernel",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_error(&kvmini(&args), 2, &["the same file as", needle]);
    }
    // The kernel was not truncated by the refused output.
    assert_eq!(std::fs::read(&kernel).unwrap(), tiny_guest_elf());
}

#[test]
fn an_initramfs_or_archive_given_to_kernel_says_what_it_looks_like() {
    let dir = TempDir::new("karchive");
    for (name, bytes, says) in [
        ("initrd.gz", &b"\x1f\x8b\x08\x00rest"[..], "gzip data"),
        ("initrd.zst", &b"\x28\xb5\x2f\xfdrest"[..], "zstd data"),
        ("initrd.xz", &b"\xfd7zXZ\x00rest"[..], "xz data"),
        ("initrd.cpio", &b"07070100000001rest"[..], "a cpio archive"),
    ] {
        let k = write(&dir, name, bytes);
        assert_error(
            &kvmini(&["--kernel", &k]),
            2,
            &[&k, says, "did you mean --initramfs?"],
        );
    }
}

#[test]
fn append_with_bad_bytes_or_too_long_is_bad_input() {
    // --append is checked as part of the command line it makes.
    assert_error(
        &kvmini(&["--append", "bad\x01"]),
        2,
        &["--cmdline", "non-printable"],
    );
    let long = "a".repeat(3000);
    assert_error(
        &kvmini(&["--append", &long]),
        2,
        &["--cmdline", "limit of 2047 bytes"],
    );
    assert_error(
        &kvmini(&["--serial", "pty,wait,wait"]),
        2,
        &["--serial", "not a back end"],
    );
}

#[test]
fn ktap_options_need_ktap_and_junit_needs_a_writable_file() {
    for args in [&["--junit", "r.xml"][..], &["--ktap-keep-going"]] {
        // clap's own words: "the following required arguments were not
        // provided: --ktap".
        assert_error(&kvmini(args), 2, &["required", "--ktap"]);
    }
    let dir = TempDir::new("bad-junit");
    let d = dir.path("adir");
    std::fs::create_dir(&d).unwrap();
    let d = d.to_str().unwrap();
    assert_error(
        &kvmini(&["--ktap", "--junit", d]),
        2,
        &[
            &format!("--junit {d}: cannot create the file"),
            "Is a directory",
        ],
    );
    // The JUnit file may not be a file kvmini writes under another flag.
    let log = dir.path("console.log");
    let log = log.to_str().unwrap();
    assert_error(
        &kvmini(&["--ktap", "--junit", log, "--serial-log", log]),
        2,
        &["--junit", "--serial-log", "one file twice"],
    );
}

#[test]
fn debug_exit_status_and_module_bad_values() {
    assert_error(
        &kvmini(&["--debug-exit-status", "shifted"]),
        2,
        &["--debug-exit-status", "shifted", "verbatim", "qemu"],
    );
    assert_error(
        &kvmini(&["--module", ""]),
        2,
        &["--module", "the path is empty"],
    );
    assert_error(
        &kvmini(&["--module", "m.bin,tab\there"]),
        2,
        &["--module", "printable ASCII only"],
    );
}

#[test]
fn gdb_addresses_that_cannot_be_listened_on() {
    assert_error(
        &kvmini(&["--gdb", "tcp:localhost:99999"]),
        2,
        &["--gdb", "is not a TCP port"],
    );
    assert_error(&kvmini(&["--gdb", ""]), 2, &["--gdb", "tcp:[HOST]:PORT"]);
    assert_error(
        &kvmini(&["--gdb", "/nonexistent-kvmini-dir/gdb.sock"]),
        2,
        &["--gdb /nonexistent-kvmini-dir/gdb.sock: cannot listen"],
    );
    // Something that is not a socket is not kvmini's to replace.
    let file = std::env::temp_dir().join(format!("kvmini-gdb-notasocket-{}", std::process::id()));
    std::fs::write(&file, b"keep").unwrap();
    let run = kvmini(&["--gdb", file.to_str().unwrap()]);
    assert_error(&run, 2, &["--gdb", "the path exists and is not a socket"]);
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    let _ = std::fs::remove_file(&file);
    // A port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let addr = format!("tcp::{port}");
    assert_error(
        &kvmini(&["--gdb", &addr]),
        2,
        &["--gdb tcp:127.0.0.1:", "cannot listen", "in use"],
    );
}

#[test]
fn share_directories_that_cannot_be_shared() {
    let dir = TempDir::new("bad-share");
    let file = write(&dir, "file", b"not a directory");
    let missing = dir.path("missing").display().to_string();
    let d = dir.0.display().to_string();
    assert_error(
        &kvmini(&["--share", &missing]),
        2,
        &[
            &format!("--share {missing}: cannot open the directory"),
            "No such file",
        ],
    );
    assert_error(
        &kvmini(&["--share", &file]),
        2,
        &[&format!("--share {file}: not a directory")],
    );
    // Two shares with one tag, given or by default.
    assert_error(
        &kvmini(&["--share", &d, "--share", &format!("{d},tag=share0")]),
        2,
        &["--share", "tag=share0 is already another share's"],
    );
    assert_error(
        &kvmini(&[
            "--share",
            &format!("{d},tag=t"),
            "--share",
            &format!("{d},tag=t,ro"),
        ]),
        2,
        &["--share", "tag=t is already another share's"],
    );
}

#[test]
fn share_options_that_are_wrong() {
    let long = format!("/tmp,tag={}", "x".repeat(32));
    for (arg, says) in [
        ("", "needs a directory"),
        (",ro", "needs a directory"),
        ("/tmp,rw", "unknown option 'rw'"),
        ("/tmp,tag=", "a tag may not be empty"),
        (long.as_str(), "a tag has at most 31 bytes"),
        ("/tmp,tag=a b", "printable ASCII"),
        ("/tmp,tag=a,tag=b", "tag= is given twice"),
    ] {
        assert_error(&kvmini(&["--share", arg]), 2, &["--share", says]);
    }
}

#[test]
fn exec_bad_values() {
    let dir = TempDir::new("bad-exec");
    let kernel = write(&dir, "guest.elf", &tiny_guest_elf());
    // --save-initramfs into a directory that does not exist.
    let r = kvmini(&[
        "--kernel",
        &kernel,
        "--exec",
        "true",
        "--save-initramfs",
        "/nonexistent/dir/exec.cpio",
    ]);
    assert_error(&r, 2, &["--save-initramfs", "/nonexistent/dir/exec.cpio"]);
    // A --kernel that is not there, with --exec.
    let r = kvmini(&["--kernel", "/nonexistent/vmlinuz", "--exec", "true"]);
    assert_error(&r, 2, &["/nonexistent/vmlinuz"]);
    // Flags --exec replaces, and its own flags without it.
    for args in [
        &["--exec", "true", "--initramfs", "/x"][..],
        &["--exec", "true", "--cmdline", "x"],
        &["--exec", "true", "--serial2", "null"],
        &["--exec", "true", "--debug-exit-status", "qemu"],
        &["--save-initramfs", "/tmp/x.cpio"],
        &["--exec-ro"],
    ] {
        let r = kvmini(args);
        assert_error(&r, 2, &["--exec"]);
    }
}
