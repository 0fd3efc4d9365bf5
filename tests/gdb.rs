//! `--gdb` with Debian's gdb in batch mode, on the tiny guest's `debug`
//! mode: its ELF with symbols (build.rs keeps the linked image next to the
//! embedded one) gives gdb the names kvmini_debug_point (one call a
//! round), kvmini_debug_counter (counts the calls) and kvmini_debug_banner.
//!
//! This project's PVM host emulates every guest instruction: its KVM
//! single-steps and fires instruction breakpoints, but fires no data
//! breakpoints (kvmini refuses hardware watchpoints there, which the
//! watchpoint test checks; scripts/nested-ci runs the same test on real
//! KVM, where they fire), and fails to emulate an
//! int3 instead of exiting for it (kvmini takes that failure at its own
//! int3 for the breakpoint, which the `break` tests cover).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::KVMINI;

/// The tiny guest as linked, with its symbols.
const GUEST_ELF: &str = concat!(env!("OUT_DIR"), "/kvmini-guest-linked.elf");

/// A kvmini started with `--gdb` on a Unix socket of its own (a Unix
/// socket, not TCP: the outer VM of scripts/nested-ci, which runs these
/// tests on real KVM, has no loopback network).
struct Vm {
    child: Child,
    sock: PathBuf,
    stderr: mpsc::Receiver<String>,
}

static SOCKETS: AtomicUsize = AtomicUsize::new(0);

impl Vm {
    fn start(args: &[&str]) -> Vm {
        let sock = std::env::temp_dir().join(format!(
            "kvmini-gdb-{}-{}.sock",
            std::process::id(),
            SOCKETS.fetch_add(1, Ordering::Relaxed)
        ));
        let mut child = Command::new(KVMINI)
            .arg("--gdb")
            .arg(&sock)
            .args(["--timeout", "60s"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG")
            .spawn()
            .expect("kvmini runs");
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let want = format!("--gdb is listening on {}", sock.display());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("kvmini says where --gdb listens");
            if line.contains(&want) {
                break;
            }
        }
        Vm {
            child,
            sock,
            stderr: rx,
        }
    }

    /// Waits for kvmini to end; its status, stdout and the rest of stderr.
    fn finish(mut self) -> (Option<i32>, String, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("kvmini did not end");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        // Every line, to the end of the pipe: the reader thread forwards
        // the last ones after kvmini has exited.
        let mut err = Vec::new();
        let end = Instant::now() + Duration::from_secs(10);
        while let Ok(line) = self
            .stderr
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            err.push(line);
        }
        (status, out, err.join("\n"))
    }
}

/// Runs gdb in batch mode on the tiny guest's ELF: attaches to `vm`, then
/// runs `commands` (one gdb command a line). Returns what gdb printed.
fn gdb(vm: &Vm, commands: &str) -> String {
    let script = vm.sock.with_extension("gdb");
    std::fs::write(
        &script,
        format!(
            "set pagination off\nset confirm off\ntarget remote {}\n{commands}\n",
            vm.sock.display()
        ),
    )
    .unwrap();
    let mut child = Command::new("gdb")
        .args(["-batch", "-nx", "-x"])
        .arg(&script)
        .arg(GUEST_ELF)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gdb runs");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("gdb did not end");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&script);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// gdb saw the guest exit with status 3 (the debug mode's), and so did
/// kvmini's caller; kvmini's stdout and stderr.
fn exits_3(vm: Vm, gdb_out: &str) -> (String, String) {
    assert!(gdb_out.contains("exited with code 03"), "{gdb_out}");
    let (status, stdout, err) = vm.finish();
    assert_eq!(status, Some(3), "{err}");
    (stdout, err)
}

/// The value gdb printed for `p NAME` as `$N = VALUE`, the `nth` such line.
fn printed(out: &str, nth: usize) -> String {
    out.lines()
        .filter(|l| l.starts_with('$'))
        .nth(nth)
        .and_then(|l| l.split(" = ").nth(1))
        .unwrap_or_else(|| panic!("no value {nth} in:\n{out}"))
        .to_string()
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
#[cfg_attr(not(has_gdb), ignore = "needs gdb (scripts/install-deps installs it)")]
fn break_step_examine_and_continue_to_the_exit_status() {
    let vm = Vm::start(&["--cmdline", "debug"]);
    let out = gdb(
        &vm,
        "info registers rip\n\
         break kvmini_debug_point\n\
         continue\n\
         info registers rip\n\
         stepi\n\
         info registers rip\n\
         x/s &kvmini_debug_banner\n\
         p $_siginfo\n\
         delete\n\
         continue",
    );
    // Held before its first instruction: the entry point.
    assert!(out.contains("in _start ()"), "{out}");
    assert!(
        out.contains("Breakpoint 1, 0x") && out.contains("in kvmini_debug_point ()"),
        "{out}"
    );
    let rips: Vec<&str> = out.lines().filter(|l| l.starts_with("rip ")).collect();
    assert_eq!(rips.len(), 3, "{out}");
    assert!(rips[0].contains("<_start>"), "{out}");
    assert!(rips[1].contains("<kvmini_debug_point>"), "{out}");
    // stepi moved rip past the function's first instruction.
    assert!(rips[2].contains("<kvmini_debug_point+"), "{out}");
    assert!(out.contains("\"kvmini debug target\""), "{out}");
    assert!(out.contains("exited with code 03"), "{out}");
    let (status, stdout, _) = vm.finish();
    assert_eq!(status, Some(3));
    assert_eq!(stdout, "kvmini debug target\n");
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
#[cfg_attr(not(has_gdb), ignore = "needs gdb (scripts/install-deps installs it)")]
fn two_vcpus_stop_and_resume_a_hundred_times_at_a_hardware_breakpoint() {
    let vm = Vm::start(&["--cpus", "2", "--cmdline", "debug=102"]);
    let out = gdb(
        &vm,
        "hbreak kvmini_debug_point\n\
         info threads\n\
         set $i = 0\n\
         while $i < 100\n\
         continue\n\
         set $i = $i + 1\n\
         end\n\
         p $i\n\
         p *(unsigned long *)&kvmini_debug_counter\n\
         p $rdi\n\
         info threads\n\
         delete\n\
         continue",
    );
    assert!(
        out.contains("Thread 1.1") && out.contains("Thread 1.2"),
        "{out}"
    );
    assert_eq!(printed(&out, 0), "100", "{out}");
    // Each continue stopped at the next call, no call was missed or
    // counted twice: the 100th stop is at the entry of call 100.
    assert_eq!(printed(&out, 1), "99", "{out}");
    assert_eq!(printed(&out, 2), "100", "{out}");
    exits_3(vm, &out);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
#[cfg_attr(not(has_gdb), ignore = "needs gdb (scripts/install-deps installs it)")]
fn hardware_watchpoints_fire_or_are_refused_where_kvm_cannot_fire_them() {
    let vm = Vm::start(&["--cmdline", "debug=5"]);
    let out = gdb(
        &vm,
        "hbreak kvmini_debug_point\n\
         continue\n\
         delete\n\
         watch *(unsigned long *)&kvmini_debug_counter\n\
         continue\n\
         continue\n\
         delete\n\
         rwatch *(unsigned long *)&kvmini_debug_counter\n\
         continue\n\
         delete\n\
         continue",
    );
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        // PVM's emulator fires no data breakpoints: kvmini refuses them,
        // saying why, and gdb stops the script at the refusal (the guest
        // then runs on).
        assert!(
            out.contains("Could not insert hardware watchpoint"),
            "{out}"
        );
        let (status, _, err) = vm.finish();
        assert_eq!(status, Some(3), "{err}");
        assert!(err.contains("fires no data breakpoints"), "{err}");
        return;
    }
    assert!(out.contains("Hardware watchpoint 2"), "{out}");
    assert!(out.contains("Old value = 0\nNew value = 1"), "{out}");
    assert!(out.contains("Old value = 1\nNew value = 2"), "{out}");
    assert!(out.contains("Hardware read watchpoint 3"), "{out}");
    assert!(out.contains("Value = 2"), "{out}");
    exits_3(vm, &out);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
#[cfg_attr(not(has_gdb), ignore = "needs gdb (scripts/install-deps installs it)")]
fn a_software_watchpoint_single_steps_to_the_change() {
    let vm = Vm::start(&["--cmdline", "debug=2"]);
    let out = gdb(
        &vm,
        "set can-use-hw-watchpoints 0\n\
         hbreak kvmini_debug_point\n\
         continue\n\
         delete\n\
         watch *(unsigned long *)&kvmini_debug_counter\n\
         continue\n\
         delete\n\
         continue",
    );
    assert!(out.contains("Watchpoint 2"), "{out}");
    assert!(out.contains("Old value = 0\nNew value = 1"), "{out}");
    exits_3(vm, &out);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
#[cfg_attr(not(has_gdb), ignore = "needs gdb (scripts/install-deps installs it)")]
fn registers_are_read_and_written_and_bad_memory_is_an_error() {
    let vm = Vm::start(&["--cmdline", "debug=1"]);
    // At the first instruction, held: no breakpoint needed.
    let out = gdb(
        &vm,
        "p/x $cr0\n\
         p/x $efer\n\
         p/x $cs\n\
         set $rax = 0x1234abcd\n\
         p/x $rax\n\
         python\n\
         try:\n    gdb.execute('x/2gx 0x7fff00000000')\n\
         except gdb.MemoryError as e:\n    print('refused:', e)\n\
         end\n\
         p *(unsigned long *)&kvmini_debug_counter\n\
         set var *(unsigned long *)&kvmini_debug_counter = 41\n\
         p *(unsigned long *)&kvmini_debug_counter\n\
         continue",
    );
    // Long mode with paging: CR0.PG and PE, EFER.LMA and LME.
    let cr0 = u64::from_str_radix(printed(&out, 0).trim_start_matches("0x"), 16).unwrap();
    assert_eq!(cr0 & 0x8000_0001, 0x8000_0001, "{out}");
    let efer = u64::from_str_radix(printed(&out, 1).trim_start_matches("0x"), 16).unwrap();
    assert_eq!(efer & 0x500, 0x500, "{out}");
    assert_eq!(printed(&out, 2), "0x10", "{out}");
    assert_eq!(printed(&out, 3), "0x1234abcd", "{out}");
    // (rax is dead at the entry: the guest sets it before use.) Unmapped memory:
    // an error reply, and the session goes on.
    assert!(
        out.contains("refused: Cannot access memory at address 0x7fff00000000"),
        "{out}"
    );
    assert_eq!(printed(&out, 4), "0", "{out}");
    assert_eq!(printed(&out, 5), "41", "{out}");
    exits_3(vm, &out);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
#[cfg_attr(not(has_gdb), ignore = "needs gdb (scripts/install-deps installs it)")]
fn detach_lets_the_guest_run_on_without_its_breakpoints() {
    let vm = Vm::start(&["--cmdline", "debug=3"]);
    // Stepped a little, with a breakpoint set (gdb inserts it at each
    // resume), then gone: the guest finishes without meeting it.
    let out = gdb(
        &vm,
        "stepi 3\n\
         info registers rip\n\
         break kvmini_debug_point\n\
         stepi\n\
         detach",
    );
    assert!(out.contains("<_start+"), "{out}");
    let (status, stdout, err) = vm.finish();
    assert_eq!(status, Some(3), "{err}");
    assert_eq!(stdout, "kvmini debug target\n");
    assert!(err.contains("gdb detached; the guest runs on"), "{err}");
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
#[cfg_attr(not(has_gdb), ignore = "needs gdb (scripts/install-deps installs it)")]
fn kill_from_gdb_is_status_137() {
    let vm = Vm::start(&["--cmdline", "debug"]);
    let out = gdb(&vm, "stepi\ninfo registers rip\nkill");
    assert!(out.contains("<_start+"), "{out}");
    let (status, stdout, err) = vm.finish();
    assert_eq!(status, Some(137), "{err}");
    assert_eq!(stdout, "");
    assert!(err.contains("killed from gdb (exit status 137)"), "{err}");
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
#[cfg_attr(not(has_gdb), ignore = "needs gdb (scripts/install-deps installs it)")]
fn a_dropped_connection_resumes_the_guest_and_a_new_gdb_attaches() {
    // Long enough to still run when the second gdb comes.
    let vm = Vm::start(&["--cmdline", "debug=1000000000"]);
    {
        // A client that goes without a word: the guest is released.
        let _c = UnixStream::connect(&vm.sock).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = vm
            .stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("kvmini says the connection closed");
        if line.contains("the gdb connection closed; the guest runs on") {
            break;
        }
    }
    let out = gdb(
        &vm,
        "p *(unsigned long *)&kvmini_debug_counter > 0\n\
         kill",
    );
    // The guest ran between the two: it had counted calls.
    assert_eq!(printed(&out, 0), "1", "{out}");
    let (status, _, err) = vm.finish();
    assert_eq!(status, Some(137), "{err}");
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn nowait_runs_the_guest_without_a_debugger() {
    let run = common::kvmini(&["--gdb", "tcp:127.0.0.1:0,nowait", "--cmdline", "debug"]);
    assert_eq!(run.status, Some(3), "{}", run.stderr);
    assert_eq!(run.stdout_str(), "kvmini debug target\n");
    assert!(run.stderr.contains("--gdb is listening on tcp:127.0.0.1:"));
}

/// gdb's Ctrl-C, as gdb sends it: the byte 0x03 while the guest runs. The
/// stub stops every vCPU and answers with a stop for SIGINT (signal 2).
#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn an_interrupt_stops_a_running_guest_with_sigint() {
    use std::io::Write;
    let vm = Vm::start(&["--cpus", "2", "--cmdline", "debug=1000000000"]);
    let mut c = UnixStream::connect(&vm.sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut seen = Vec::new();
    let mut read_until = |c: &mut UnixStream, want: &[u8]| {
        let mut buf = [0u8; 512];
        while !seen.windows(want.len()).any(|w| w == want) {
            let n = c.read(&mut buf).expect("the stub answers");
            assert!(n > 0, "the stub closed: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    };
    // Continue (acknowledged with '+'), then the interrupt.
    c.write_all(b"$c#63").unwrap();
    read_until(&mut c, b"+");
    std::thread::sleep(Duration::from_millis(200));
    c.write_all(&[0x03]).unwrap();
    read_until(&mut c, b"$T02");
    // Killed from there.
    c.write_all(b"+$vKill;1#6e").unwrap();
    let (status, _, err) = vm.finish();
    assert_eq!(status, Some(137), "{err}");
}

/// All-stop without breakpoints: 100 single steps of vCPU 0 with a second
/// vCPU, each a stop of both and a resume; rip moves through the guest's
/// code, and the guest still ends as it would.
#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
#[cfg_attr(not(has_gdb), ignore = "needs gdb (scripts/install-deps installs it)")]
fn two_vcpus_single_step_a_hundred_times() {
    let vm = Vm::start(&["--cpus", "2", "--cmdline", "debug=1"]);
    let out = gdb(
        &vm,
        "set $i = 0\n\
         while $i < 100\n\
         stepi\n\
         set $i = $i + 1\n\
         end\n\
         p $i\n\
         p $pc != 0x100000\n\
         info threads\n\
         continue",
    );
    assert_eq!(printed(&out, 0), "100", "{out}");
    assert_eq!(printed(&out, 1), "1", "{out}");
    assert!(out.contains("Thread 1.2"), "{out}");
    let (stdout, _) = exits_3(vm, &out);
    assert_eq!(stdout, "kvmini debug target\n");
}
