//! Builds the tiny guest kernel (guest/) into `$OUT_DIR/kvmini-guest.elf`,
//! which src/ embeds with `include_bytes!`.
//!
//! The guest is a `#![no_std] #![no_main]` Rust program compiled by invoking
//! `$RUSTC` directly for the host target (x86_64-unknown-linux-gnu, the only
//! one installed) and linked freestanding with guest/link.ld: no extra rustup
//! target, no network, no prebuilt binary. Because we call rustc ourselves,
//! none of the outer build's flags (RUSTFLAGS / CARGO_ENCODED_RUSTFLAGS, e.g.
//! cargo-fuzz's sanitizer flags, or the profile's opt-level) reach the guest.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Tell cargo to rerun us when anything under `dir` changes (including files
/// being added: the directory itself is listed too).
fn rerun_if_changed(dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            rerun_if_changed(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

/// Report a guest build failure plainly (no build-script backtrace) and stop.
fn fail(msg: std::fmt::Arguments) -> ! {
    eprintln!("error: building the tiny guest (guest/) failed: {msg}");
    std::process::exit(1)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC");
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let guest = manifest_dir.join("guest");
    rerun_if_changed(&guest);

    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let elf = out_dir.join("kvmini-guest.elf");
    let link_ld = guest.join("link.ld");

    let mut cmd = Command::new(&rustc);
    cmd.current_dir(&manifest_dir)
        .arg("guest/src/main.rs")
        .args([
            "--crate-name",
            "kvmini_guest",
            "--crate-type",
            "bin",
            "--edition",
            "2021",
        ])
        .args(["--target", "x86_64-unknown-linux-gnu"])
        .args(["-C", "panic=abort"])
        .args(["-C", "opt-level=s"])
        .args(["-C", "codegen-units=1"])
        .args(["-C", "debuginfo=0"])
        .args(["-C", "strip=debuginfo"]) // libcore ships with debuginfo
        .args(["-C", "relocation-model=static"])
        // No SSE: this machine's /dev/kvm (PVM) emulates every guest
        // instruction with KVM's x86 emulator, which has no SSE arithmetic
        // (xorps & co. end the VM with "emulation failure"), and LLVM likes
        // xorps/movups for zeroing and copying. The guest uses no floats, so
        // only integer registers are needed. rustc warns that the x86_64
        // hard-float ABI wants sse2 (future-incompat lint, still a warning on
        // stable 1.95 and nightly 1.97); that one warning is filtered below.
        // The only SSE left is in precompiled libcore formatting code, which
        // the guest never runs (its panic handler does not format).
        .args(["-C", "target-feature=-sse,-sse2"])
        .args(["-C", "link-arg=-nostdlib"])
        .args(["-C", "link-arg=-static"])
        .arg("-C")
        .arg(format!("link-arg=-Wl,-T,{}", link_ld.display()))
        .args(["-C", "link-arg=-Wl,--build-id=none"])
        .args(["--cap-lints", "warn"])
        .arg("-o")
        .arg(&elf)
        // Nothing from the outer build may leak in (rustc does not read these
        // itself today; removing them keeps it that way).
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");

    let output = match cmd.output() {
        Ok(output) => output,
        Err(e) => fail(format_args!(
            "cannot run {}: {e}",
            Path::new(&rustc).display()
        )),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        fail(format_args!(
            "{} exited with {}\ncommand: {:?}\n--- rustc stderr ---\n{}",
            Path::new(&rustc).display(),
            output.status,
            cmd,
            stderr
        ));
    }
    let expected = |l: &str| {
        l.contains("`sse2` must be enabled")
            || l.contains("warnings emitted")
            || l.contains("warning emitted")
    };
    for line in stderr
        .lines()
        .filter(|l| l.starts_with("warning") && !expected(l))
    {
        println!("cargo:warning=tiny guest: {line}");
    }
}
