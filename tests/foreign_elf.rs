//! A 64-bit ELF that kvmini's authors did not write boots with --kernel:
//! a freestanding C program laid out by gcc and GNU ld with their default
//! static layout (0x400000, several segments), which prints a line on COM1
//! and writes 0 to the debug-exit port.

mod common;
use common::*;
use std::process::Command;

const SOURCE: &str = r#"
static inline void outb(unsigned short port, unsigned char v) {
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}
static const char msg[] = "hello from a foreign ELF\n";
void _start(void) {
    for (const char *p = msg; *p; p++) outb(0x3f8, *p);
    outb(0xf4, 0);
    for (;;) __asm__ volatile("hlt");
}
"#;

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn gcc_built_elf_boots_and_exits_0() {
    let dir = TempDir::new("foreign");
    let src = dir.path("guest.c");
    let elf = dir.path("guest.elf");
    std::fs::write(&src, SOURCE).unwrap();
    let cc = Command::new("gcc")
        .args([
            "-static",
            "-nostdlib",
            "-ffreestanding",
            "-fno-pie",
            "-no-pie",
            "-O2",
            "-o",
        ])
        .arg(&elf)
        .arg(&src)
        .output()
        .expect("this test needs gcc to build an ELF kvmini did not write");
    assert!(
        cc.status.success(),
        "gcc failed: {}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let r = kvmini(&["--kernel", elf.to_str().unwrap()]);
    r.assert_no_panic();
    assert_eq!(r.stdout_str(), "hello from a foreign ELF\n");
    assert_eq!(r.status, Some(0), "{}", r.stderr);
}
