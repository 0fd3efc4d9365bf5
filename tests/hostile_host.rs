//! A careless or hostile host: resource limits, files that block, sockets
//! in use. kvmini must end each case with its documented status and one
//! `kvmini:` line, never a signal, a hang or a backtrace.

mod common;
use common::*;
use std::process::Command;

/// Runs `kvmini ARGS` under `ulimit -v KIB` (address space, KiB).
fn under_address_limit(kib: u64, args: &str) -> Run {
    Command::new("sh")
        .args(["-c", &format!("ulimit -v {kib} && exec {KVMINI} {args}")])
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
        .into()
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn running_out_of_address_space_is_status_1_with_one_line_on_every_thread() {
    let dir = TempDir::new("oom");
    let log = dir.path("serial.log");
    let args = format!(
        "--memory 16M --serial-log '{}' --cmdline exit=0",
        log.display()
    );
    // The smallest limit (KiB) under which the VM runs to its end: found by
    // bisection, so the test follows the binary's size as it changes.
    let (mut lo, mut hi) = (1024u64, 1 << 20);
    assert_eq!(
        under_address_limit(hi, &args).status,
        Some(0),
        "1 GiB must do"
    );
    while hi - lo > 16 {
        let mid = (lo + hi) / 2;
        if under_address_limit(mid, &args).status == Some(0) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    // Below it, allocations fail one after another, on the main thread, the
    // vCPU's and the console's: every one must end the same clean way.
    let mut out_of_memory = 0;
    for kib in (hi.saturating_sub(3000)..hi).step_by(25) {
        let r = under_address_limit(kib, &args);
        r.assert_no_panic();
        let lines: Vec<&str> = r.stderr.lines().collect();
        match r.status {
            Some(0) => {}
            Some(1) => {
                assert_eq!(lines.len(), 1, "ulimit -v {kib}: {}", r.stderr);
                assert!(lines[0].starts_with("kvmini: error: "), "{}", r.stderr);
                out_of_memory += usize::from(lines[0].contains("out of memory"));
            }
            // Guest memory itself could not be mapped: the flag's fault.
            Some(2) => {
                assert_eq!(lines.len(), 1, "ulimit -v {kib}: {}", r.stderr);
                assert!(
                    lines[0].starts_with("kvmini: error: --memory: "),
                    "{}",
                    r.stderr
                );
            }
            other => panic!("ulimit -v {kib}: status {other:?}: {}", r.stderr),
        }
    }
    assert!(
        out_of_memory > 0,
        "no limit below {hi} KiB made a heap allocation fail"
    );
}
