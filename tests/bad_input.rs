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
        &kvmini(&["--memory", "100T"]),
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
    for len in [10, 100, 1000] {
        let k = write(&dir, &format!("trunc{len}"), &elf[..len]);
        assert_error(&kvmini(&["--kernel", &k]), 2, &[&k, "invalid or truncated"]);
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
    let mut bz = vec![0u8; 0x4000];
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    bz[0x1f1] = 4; // setup_sects
                   // boot_flag (0x1fe) left zero instead of 0xaa55: corrupt.
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
    // Move the first program header's physical address to 100 MiB.
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    elf[phoff + 0x18..phoff + 0x20].copy_from_slice(&(100u64 << 20).to_le_bytes());
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
    assert_error(&kvmini(&["--kernel", &k]), 2, &[&k, "invalid"]);
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
        &kvmini(&["--memory", "1000T"]),
        2,
        &["--memory", "cannot map"],
    );
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
