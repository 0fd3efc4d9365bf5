//! `--exec` without Linux: the initramfs kvmini builds (saved with
//! `--save-initramfs`, which happens before /dev/kvm is opened) and, with
//! the tiny guest standing in for the guest init (`execio` mode), the split of COM2's framed bytes into kvmini's stdout
//! and stderr and the command's status as kvmini's. Booting Linux on the
//! host's files is scripts/nested-ci's part (checks linux-exec-*).

mod common;
use common::*;

use std::collections::HashMap;

/// The tiny guest as a `--kernel` file: `--exec` boots whatever it is given.
const GUEST_ELF: &str = concat!(env!("OUT_DIR"), "/kvmini-guest.elf");

/// The entries of a newc cpio archive: name -> (mode, data).
fn read_cpio(bytes: &[u8]) -> HashMap<String, (u32, Vec<u8>)> {
    let mut entries = HashMap::new();
    let mut at = 0;
    let hex = |b: &[u8]| u32::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap();
    loop {
        let h = &bytes[at..at + 110];
        assert_eq!(&h[..6], b"070701", "entry at {at} is not newc");
        let field = |i: usize| hex(&h[6 + 8 * i..14 + 8 * i]);
        let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
        let name_at = at + 110;
        let name = std::str::from_utf8(&bytes[name_at..name_at + namesize - 1])
            .unwrap()
            .to_string();
        let data_at = (name_at + namesize).div_ceil(4) * 4;
        let data = bytes[data_at..data_at + size].to_vec();
        at = (data_at + size).div_ceil(4) * 4;
        if name == "TRAILER!!!" {
            assert_eq!(at, bytes.len(), "bytes after the trailer");
            return entries;
        }
        entries.insert(name, (mode, data));
    }
}

#[test]
fn the_initramfs_holds_the_init_the_command_and_the_shares() {
    let dir = TempDir::new("exec-initramfs");
    let saved = dir.path("exec.cpio");
    let extra = dir.path("extra");
    std::fs::create_dir(&extra).unwrap();
    let share = format!("{},tag=data,ro", extra.display());
    // Whether the tiny guest then runs (0) or KVM is missing (3), the
    // initramfs was built and saved first.
    let r = kvmini(&[
        "--kernel",
        GUEST_ELF,
        "--share",
        &share,
        "--exec",
        "echo 'it works'; exit 4",
        "--save-initramfs",
        saved.to_str().unwrap(),
        "--timeout",
        "10s",
    ]);
    assert!(matches!(r.status, Some(0 | 3)), "{}", r.stderr);
    let cpio = read_cpio(&std::fs::read(&saved).unwrap());
    let (mode, init) = &cpio["init"];
    assert_eq!(mode & 0o170_777, 0o100_755);
    assert_eq!(&init[..4], b"\x7fELF", "init is not an ELF program");
    assert_eq!(init[16], 2, "init is not ET_EXEC (static, no interpreter)");
    assert_eq!(cpio["kvmini/cmd"].1, b"echo 'it works'; exit 4\0");
    // Tests run without a terminal: pipe mode (stdin /dev/null).
    assert_eq!(cpio["kvmini/mode"].1, b"pipe");
    let cwd = std::env::current_dir().unwrap();
    let mut want_cwd = cwd.to_str().unwrap().as_bytes().to_vec();
    want_cwd.push(0);
    assert_eq!(cpio["kvmini/cwd"].1, want_cwd);
    let mounts = String::from_utf8(cpio["kvmini/mounts"].1.clone()).unwrap();
    let mounts: Vec<&str> = mounts.trim_end_matches('\0').split('\0').collect();
    assert_eq!(
        mounts,
        [
            "kvmini-cwd",
            cwd.to_str().unwrap(),
            "rw",
            "data",
            extra.to_str().unwrap(),
            "ro"
        ]
    );
    let env = String::from_utf8_lossy(&cpio["kvmini/env"].1).into_owned();
    assert!(
        env.split('\0')
            .any(|kv| kv == format!("PWD={}", cwd.display())),
        "{env}"
    );
    assert!(env.split('\0').any(|kv| kv.starts_with("PATH=")), "{env}");
    for node in ["dev/console", "dev/ttyS1", "dev/null"] {
        assert_eq!(
            cpio[node].0 & 0o170_000,
            0o020_000,
            "{node} is a char device"
        );
    }
    // The tiny guest is no bzImage: no release, so no modules to load.
    assert_eq!(cpio["kvmini/modules"].1, b"");
}

/// `--exec true` with the tiny guest in `mode` standing in for the init.
fn tiny_exec(mode: &str, timeout: &str, more: &[&str]) -> Run {
    let mut args = vec![
        "--kernel",
        GUEST_ELF,
        "--exec",
        "true",
        "--append",
        mode,
        "--timeout",
        timeout,
    ];
    args.extend_from_slice(more);
    kvmini(&args)
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn com2_is_split_into_stdout_and_stderr_and_the_status_is_the_commands() {
    let r = tiny_exec("execio", "20s", &[]);
    assert_eq!(r.status, Some(3), "{}", r.stderr);
    assert_eq!(r.stdout, b"to stdout\ndle:\x10\nend\n");
    // Only the command's stderr: kvmini adds no line for its status.
    assert_eq!(r.stderr, "to stderr\n");

    // With -v kvmini says how it ended, after the command's own lines.
    let r = tiny_exec("execio", "20s", &["-v"]);
    assert_eq!(r.status, Some(3), "{}", r.stderr);
    assert!(r.stderr.contains("to stderr\n"), "{}", r.stderr);
    assert!(
        r.last_stderr_line().contains("exit status 3"),
        "{}",
        r.stderr
    );
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn endings_other_than_the_commands_status_keep_kvminis_line() {
    // The tiny guest spins: --timeout ends it (5), with kvmini's line.
    let r = tiny_exec("spin", "300ms", &[]);
    assert_eq!(r.status, Some(5), "{}", r.stderr);
    assert!(r.last_stderr_line().contains("timed out"), "{}", r.stderr);
}
