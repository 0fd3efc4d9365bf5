//! The README's copy-paste examples ("Using kvmini in CI", and the runnable
//! lines of "Serial console"), run for real.
//!
//! Each test holds its example exactly as the README spells it and first
//! checks that the README still contains it, so the two cannot drift. Then
//! it runs the example with `sh -c` (so quoting is the shell's, as for a
//! user), in a fresh directory, with kvmini first on PATH.
//!
//! Examples that boot a Linux bzImage cannot run at a useful speed on the
//! software-KVM machines the tests run on. For those, the test (1) runs the
//! line verbatim in a directory without a bzImage, which proves every flag
//! is accepted (kvmini gets as far as reading the kernel: status 2 naming
//! `bzImage`, not a usage error), and (2) runs the same flags against the
//! tiny guest, with `--kernel ... --initramfs ...` replaced by a tiny-guest
//! mode that prints what the Linux guest would.

mod common;
use common::*;

use std::path::Path;
use std::process::{Command, Stdio};

/// The README section `heading` (from its "## " line to the next one).
fn readme_section(heading: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let start = readme
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("README.md has no \"## {heading}\" section"));
    let body = &readme[start + 1..];
    let end = body[3..].find("\n## ").map_or(body.len(), |e| e + 4);
    body[..end].to_string()
}

/// Fails unless the README section shows `example` verbatim.
#[track_caller]
fn assert_shown(heading: &str, example: &str) {
    assert!(
        readme_section(heading).contains(example),
        "README's \"{heading}\" no longer shows this example; update the test with it:\n{example}"
    );
}

#[track_caller]
fn assert_in_ci_section(example: &str) {
    assert_shown("Using kvmini in CI", example);
}

/// Runs `script` with sh in `dir`, kvmini first on PATH.
fn sh(dir: &Path, script: &str) -> Run {
    let bin = Path::new(KVMINI).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run sh")
        .into()
}

/// The last line of stdout (where the examples' `echo $?` lands).
fn last_stdout_line(r: &Run) -> String {
    r.stdout_str().lines().last().unwrap_or("").to_string()
}

/// A bzImage example run verbatim where no bzImage exists: every flag was
/// accepted, and kvmini stopped at the kernel.
#[track_caller]
fn assert_flags_accepted(dir: &Path, script: &str) {
    let r = sh(dir, script);
    r.assert_no_panic();
    assert_eq!(r.status, Some(2), "{script}\nstderr:\n{}", r.stderr);
    let last = r.last_stderr_line();
    assert!(
        last.contains("bzImage") && !last.contains("kvmini --help"),
        "expected the missing kernel to be the only complaint, got:\n{}",
        r.stderr
    );
}

/// `example` with its Linux kernel flags replaced by `tiny`.
fn on_tiny_guest(example: &str, linux: &str, tiny: &str) -> String {
    assert!(example.contains(linux), "{example:?} lacks {linux:?}");
    example.replace(linux, tiny)
}

// ---- Using kvmini in CI: wait for a verdict on the console ------------------

const VERDICT: &str = "kvmini --kernel bzImage --initramfs tests.cpio --until 'ALL TESTS PASSED' --fail-on 'Kernel panic|FAILED' --timeout 60s";

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn verdict_example_with_a_bzimage() {
    assert_in_ci_section(VERDICT);
    let dir = TempDir::new("ci-verdict");
    assert_flags_accepted(&dir.0, VERDICT);

    // The same flags on the tiny guest: the echo guest prints (echoes) a
    // test transcript typed in with --input and then keeps running, as a
    // test suite that prints its summary and stays up would.
    let tiny = on_tiny_guest(
        VERDICT,
        "--kernel bzImage --initramfs tests.cpio",
        "--cmdline echo --input transcript.txt",
    );
    for (transcript, status, last) in [
        (
            "test_a ... ok\ntest_b ... ok\nALL TESTS PASSED\n",
            0,
            r#"kvmini: --until "ALL TESTS PASSED" matched (exit status 0)"#,
        ),
        (
            "test_a ... ok\ntest_b ... FAILED\n",
            7,
            r#"kvmini: --fail-on "Kernel panic|FAILED" matched (exit status 7)"#,
        ),
        (
            "[    1.234567] Kernel panic - not syncing: VFS: Unable to mount root fs\n",
            7,
            r#"kvmini: --fail-on "Kernel panic|FAILED" matched (exit status 7)"#,
        ),
    ] {
        std::fs::write(dir.path("transcript.txt"), transcript).unwrap();
        let r = sh(&dir.0, &tiny);
        r.assert_no_panic();
        assert_eq!(
            r.status,
            Some(status),
            "{transcript:?}\nstderr:\n{}",
            r.stderr
        );
        assert_eq!(r.last_stderr_line(), last, "{transcript:?}");
    }
}

// The second line (the hello guest prints FAILED, then exits 0 at once)
// printed 0 before 96ba011: the guest's exit was recorded before the console
// matched the banner (see serial_console.rs,
// fail_on_matches_output_printed_just_before_a_clean_exit).
#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn verdict_examples_with_the_tiny_guest() {
    for (example, want) in [
        (
            "kvmini --cmdline 'hello ALL TESTS PASSED' --until 'ALL TESTS PASSED' --fail-on 'FAILED' --timeout 10s; echo $?   # 0",
            "0",
        ),
        (
            "kvmini --cmdline 'hello test_b FAILED' --until 'ALL TESTS PASSED' --fail-on 'FAILED' --timeout 10s; echo $?       # 7",
            "7",
        ),
        (
            "kvmini --cmdline spin --until 'ALL TESTS PASSED' --fail-on 'FAILED' --timeout 2s; echo $?                          # 5",
            "5",
        ),
    ] {
        assert_in_ci_section(example);
        let dir = TempDir::new("ci-verdict-tiny");
        let r = sh(&dir.0, example);
        r.assert_no_panic();
        assert_eq!(
            last_stdout_line(&r),
            want,
            "{example}\nstderr:\n{}",
            r.stderr
        );
    }
}

// ---- Using kvmini in CI: keep the console, turn the status into a message --

const STATUS_SCRIPT: &str = r#"kvmini --kernel bzImage --initramfs tests.cpio --serial-log console.log --serial-timestamps \
    --until 'ALL TESTS PASSED' --fail-on 'Kernel panic|FAILED' --timeout 60s
status=$?
case $status in
    0) echo "tests passed" ;;
    7) echo "a test failed, see console.log" ;;
    5) echo "the guest hung, see console.log" ;;
    6) echo "the kernel panicked, see console.log" ;;
    2 | 3) echo "kvmini could not start the guest (status $status)" ;;
    *) echo "the guest ended with status $status" ;;
esac
exit $status"#;

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn status_script_example() {
    assert_in_ci_section(STATUS_SCRIPT);
    let dir = TempDir::new("ci-script");

    // Verbatim, without a bzImage: the script reports a job that cannot start.
    let r = sh(&dir.0, STATUS_SCRIPT);
    assert_eq!(r.status, Some(2), "stderr:\n{}", r.stderr);
    assert_eq!(
        last_stdout_line(&r),
        "kvmini could not start the guest (status 2)"
    );
    assert!(r.last_stderr_line().contains("bzImage"), "{}", r.stderr);

    // The same script and flags on the tiny guest (see verdict_example...).
    let tiny = on_tiny_guest(
        STATUS_SCRIPT,
        "--kernel bzImage --initramfs tests.cpio",
        "--cmdline echo --input transcript.txt",
    );
    for (transcript, status, message) in [
        ("ALL TESTS PASSED\n", 0, "tests passed"),
        ("test_b FAILED\n", 7, "a test failed, see console.log"),
    ] {
        std::fs::write(dir.path("transcript.txt"), transcript).unwrap();
        let r = sh(&dir.0, &tiny);
        assert_eq!(r.status, Some(status), "stderr:\n{}", r.stderr);
        // The guest's echo goes to stdout first (--until may stop it before
        // its last newline); the script's message comes last.
        assert!(
            r.stdout_str().ends_with(&format!("{message}\n")),
            "{:?}",
            r.stdout_str()
        );
        // The artifact: the console with timestamps.
        let log = std::fs::read_to_string(dir.path("console.log")).unwrap();
        let first = log.lines().next().unwrap_or("");
        assert!(
            first.starts_with("[   ") && first.ends_with("] echo ready"),
            "console.log: {log:?}"
        );
        assert!(
            log.contains(&format!("] {}", transcript.trim_end())),
            "{log:?}"
        );
    }

    // A hung guest: same script, a spinning guest and a short timeout.
    let hung = on_tiny_guest(
        STATUS_SCRIPT,
        "--kernel bzImage --initramfs tests.cpio",
        "--cmdline spin",
    )
    .replace("--timeout 60s", "--timeout 2s");
    let r = sh(&dir.0, &hung);
    assert_eq!(r.status, Some(5), "stderr:\n{}", r.stderr);
    assert_eq!(r.stdout_str(), "the guest hung, see console.log\n");
}

// ---- Using kvmini in CI: type commands at a shell prompt -------------------

const INPUT_LINUX: &str = "printf '/tests/run-all\\npoweroff -f\\n' > commands.txt
kvmini --kernel bzImage --initramfs rootfs.cpio --input commands.txt --input-after '# $' --until 'ALL TESTS PASSED' --fail-on 'Kernel panic|FAILED' --timeout 120s";

const INPUT_TINY: &str = "printf 'ALL TESTS PASSED\\n' > commands.txt
kvmini --cmdline echo --input commands.txt --input-after 'echo ready' --until 'ALL TESTS PASSED' --timeout 10s; echo $?   # 0";

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn input_at_a_prompt_example() {
    assert_in_ci_section(INPUT_LINUX);
    let dir = TempDir::new("ci-input");
    assert_flags_accepted(&dir.0, INPUT_LINUX);
    assert_eq!(
        std::fs::read_to_string(dir.path("commands.txt")).unwrap(),
        "/tests/run-all\npoweroff -f\n"
    );

    // The tiny-guest version, verbatim: the echo guest "types back" the
    // command after its prompt, and --until sees it.
    assert_in_ci_section(INPUT_TINY);
    let r = sh(&dir.0, INPUT_TINY);
    r.assert_no_panic();
    // --until stops the guest as soon as the text matched, maybe before it
    // echoed the newline; kvmini then ends the line, so `echo $?` prints on
    // a line of its own.
    let out = r.stdout_str();
    assert_eq!(last_stdout_line(&r), "0", "stderr:\n{}", r.stderr);
    assert!(
        out.starts_with("echo ready\nALL TESTS PASSED"),
        "{:?}",
        r.stdout_str()
    );
    assert_eq!(
        r.last_stderr_line(),
        r#"kvmini: --until "ALL TESTS PASSED" matched (exit status 0)"#
    );
}

// ---- Using kvmini in CI: results on ttyS1 ------------------------------------

const TTYS1_LINUX: &str = "kvmini --kernel bzImage --initramfs tests.cpio --serial2 file=results.txt --serial-log console.log --fail-on 'Kernel panic' --timeout 60s";

const TTYS1_TINY: &str = "kvmini --cmdline com2 --serial2 file=results.txt";

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn results_on_ttys1_example() {
    assert_in_ci_section(TTYS1_LINUX);
    let dir = TempDir::new("ci-ttys1");
    assert_flags_accepted(&dir.0, TTYS1_LINUX);

    // The same flags on the tiny guest, whose com2 mode writes its "test
    // output" to COM2 and a line to COM1.
    let tiny = on_tiny_guest(
        TTYS1_LINUX,
        "--kernel bzImage --initramfs tests.cpio",
        "--cmdline com2",
    );
    let r = sh(&dir.0, &tiny);
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert_eq!(r.stdout_str(), "com2 done\n");
    assert_eq!(
        std::fs::read_to_string(dir.path("results.txt")).unwrap(),
        "kvmini tiny guest: COM2\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path("console.log")).unwrap(),
        "com2 done\n",
        "the console log holds COM1 only"
    );

    assert_in_ci_section(&format!("`{TTYS1_TINY}`"));
    let dir = TempDir::new("ci-ttys1-tiny");
    let r = sh(&dir.0, TTYS1_TINY);
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.path("results.txt")).unwrap(),
        "kvmini tiny guest: COM2\n"
    );
}

// ---- Using kvmini in CI: let the guest decide --------------------------------

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn guest_status_example() {
    let example = "kvmini --cmdline 'exit=3'; echo $?";
    assert_in_ci_section(&format!("`{example}` prints 3"));
    let dir = TempDir::new("ci-exit");
    let r = sh(&dir.0, example);
    assert_eq!(r.stdout_str(), "3\n", "stderr:\n{}", r.stderr);
    assert_eq!(
        r.last_stderr_line(),
        "kvmini: guest wrote 3 to the debug-exit port (exit status 3)"
    );
}

// ---- Serial console section ---------------------------------------------------

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn serial_console_examples_with_the_tiny_guest() {
    let dir = TempDir::new("serial-examples");

    let piped = "printf 'hello\\n\\004' | kvmini --cmdline echo";
    assert_shown("Serial console", piped);
    let r = sh(&dir.0, piped);
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert_eq!(r.stdout_str(), "echo ready\nhello\n");

    let com2 = "kvmini --cmdline com2 --serial2 file=ttyS1.txt";
    assert_shown("Serial console", com2);
    let r = sh(&dir.0, com2);
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert_eq!(r.stdout_str(), "com2 done\n");
    assert_eq!(
        std::fs::read_to_string(dir.path("ttyS1.txt")).unwrap(),
        "kvmini tiny guest: COM2\n"
    );

    for (example, file) in [
        ("kvmini --serial file=console.log", "console.log"),
        (
            "kvmini --serial null --serial-log console.log",
            "console.log",
        ),
    ] {
        assert_shown("Serial console", example);
        let r = sh(&dir.0, example);
        assert_eq!(r.status, Some(0), "{example}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{example}");
        assert_eq!(
            std::fs::read_to_string(dir.path(file)).unwrap(),
            "kvmini tiny guest\nmemory: 128 MiB\ncmdline: hello\n",
            "{example}"
        );
    }

    // The timestamped log shown in the README: same text, same prefix shape.
    let stamped = "kvmini --serial-log console.log --serial-timestamps >/dev/null; cat console.log";
    assert_shown("Serial console", &format!("$ {stamped}\n"));
    let r = sh(&dir.0, stamped);
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    let out = r.stdout_str();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out:?}");
    for (line, text) in lines
        .iter()
        .zip(["kvmini tiny guest", "memory: 128 MiB", "cmdline: hello"])
    {
        assert!(line.starts_with("[   0."), "{line:?}");
        assert_eq!(&line[12..], format!("] {text}"), "{line:?}");
    }
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
#[cfg_attr(
    not(has_socat),
    ignore = "needs socat (scripts/install-deps installs it; build.rs probes for it)"
)]
fn socket_example_with_socat() {
    // The README attaches with socat: run that client.
    let client = "socat - UNIX-CONNECT:/tmp/vm.sock";
    assert_shown("Serial console", client);
    // Our own socket path (tests run in parallel), the README's client line.
    let dir = TempDir::new("socat");
    let sock = dir.path("vm.sock");
    let script = format!(
        "kvmini --cmdline echo --serial socket='{sock}' --timeout 30s &\n\
         while [ ! -S '{sock}' ]; do sleep 0.05; done\n\
         (printf 'typed through socat\\n'; sleep 1; printf '\\004'; sleep 1) | {client}\n\
         wait $!",
        sock = sock.display(),
        client = client.replace("/tmp/vm.sock", &format!("'{}'", sock.display())),
    );
    let r = sh(&dir.0, &script);
    assert_eq!(r.status, Some(0), "stderr:\n{}", r.stderr);
    assert_eq!(r.stdout_str(), "echo ready\ntyped through socat\n");
}

#[test]
fn the_readme_says_where_the_build_puts_the_binary() {
    // This very binary, built by cargo for this test run: its path below
    // the target directory is what the README must name (with the
    // release profile, which the README's commands use).
    let exe = Path::new(KVMINI);
    let parts: Vec<String> = exe
        .components()
        .rev()
        .take(3)
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let (name, triple) = (&parts[0], &parts[2]);
    let stated = format!("target/{triple}/release/{name}");
    assert_shown("The two commands", &format!("`{stated}`"));
    assert_shown("The two commands", "`cargo install --path .`");
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn append_keeps_the_default_command_line() {
    // The tiny guest prints its command line: --append adds to "hello".
    let r = kvmini(&["--append", "init=/bin/sh"]);
    assert_eq!(r.status, Some(0), "{}", r.stderr);
    assert!(
        r.stdout_str().contains("cmdline: hello init=/bin/sh\n"),
        "{}",
        r.stdout_str()
    );
    let r = kvmini(&["--cmdline", "hello a", "--append", "b"]);
    assert!(
        r.stdout_str().contains("cmdline: hello a b\n"),
        "{}",
        r.stdout_str()
    );
}

// ---- Using kvmini in CI: KTAP verdicts and JUnit ----------------------------

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn ktap_examples_with_the_tiny_guest() {
    for (example, want, line) in [
        (
            "kvmini --cmdline 'ktap=pp(pps)p' --ktap --junit results.xml --timeout 10s; echo $?   # 0, \"ktap: 5 passed, 0 failed, 1 skipped\"",
            "0",
            "ktap: 5 passed, 0 failed, 1 skipped",
        ),
        (
            "kvmini --cmdline 'ktap=pfp' --ktap --timeout 10s; echo $?                          # 7, \"kvmini: ktap: not ok 2 case_2\"",
            "7",
            "kvmini: ktap: not ok 2 case_2 (exit status 7)",
        ),
        (
            "kvmini --cmdline 'ktap=pp!p ktap-end=spin' --ktap --timeout 2s; echo $?            # 5, \"... report incomplete: 2 of 3 top-level results ...\"",
            "5",
            "ktap: 2 passed, 0 failed, 0 skipped (report incomplete: 2 of 3 top-level results, the last \"ok 2 case_2\")",
        ),
    ] {
        assert_in_ci_section(example);
        let dir = TempDir::new("ci-ktap");
        let r = sh(&dir.0, example);
        r.assert_no_panic();
        assert_eq!(last_stdout_line(&r), want, "{example}\nstderr:\n{}", r.stderr);
        assert!(
            r.stderr.lines().any(|l| l == line),
            "{example}: no {line:?} in\n{}",
            r.stderr
        );
        if example.contains("--junit results.xml") {
            let xml = std::fs::read_to_string(dir.path("results.xml")).unwrap();
            assert_eq!(xml.matches("<testcase ").count(), 6, "{xml}");
        }
    }
}

const KUNIT: &str = "kvmini --kernel bzImage --append 'kunit.enable=1 kunit_shutdown=poweroff' --ktap --junit kunit.xml --serial-log console.log --timeout 300s";

#[test]
fn kunit_example_flags_are_accepted() {
    assert_in_ci_section(KUNIT);
    let dir = TempDir::new("ci-kunit");
    assert_flags_accepted(&dir.0, KUNIT);
}

// ---- Test kernels: the kvm-unit-tests examples -------------------------------

#[test]
fn kvm_unit_tests_examples_flags_are_accepted() {
    for example in [
        "kvmini --kernel x86/msr.flat --timeout 60s; echo $?                                     # 0: PASS, 1: FAIL, 38: SKIP",
        "kvmini --kernel x86/smptest.flat --cpus 2 --debug-exit-status qemu --timeout 60s; echo $?   # QEMU's statuses: 1 PASS, 3 FAIL",
    ] {
        assert_shown("Test kernels: multiboot, kvm-unit-tests", example);
        // No kvm-unit-tests checkout here: every flag is accepted and
        // kvmini stops at the missing kernel (status 2, naming it).
        let dir = TempDir::new("ci-kut");
        let r = sh(&dir.0, example);
        r.assert_no_panic();
        assert_eq!(last_stdout_line(&r), "2", "{example}\n{}", r.stderr);
        let kernel = example.split_whitespace().nth(2).unwrap();
        assert!(
            r.stderr.contains(&format!("--kernel {kernel}: cannot read the file")),
            "{}",
            r.stderr
        );
    }
}
