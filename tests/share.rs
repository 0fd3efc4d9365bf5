//! `--share`: the tiny guest's 9P2000.L client (`p9` mode) against a real
//! host directory, through the virtio-mmio transport, the share's worker
//! thread and its seccomp filter, with the host checking the directory
//! afterwards.

mod common;
use common::*;

/// What the tiny guest writes to guest.txt (guest/src/p9.rs).
const PATTERN: &[u8] = b"written by the kvmini tiny guest over 9p\n";

fn share(dir: &TempDir) -> String {
    let d = dir.path("share");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("hello.txt"), b"hello from the host\nsecond line\n").unwrap();
    std::os::unix::fs::symlink("/etc", d.join("etc")).unwrap();
    d.to_str().unwrap().to_string()
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn the_guest_reads_and_writes_a_share() {
    let dir = TempDir::new("share-rw");
    let d = share(&dir);
    for irqchip in ["off", "on"] {
        let _ = std::fs::remove_file(format!("{d}/guest.txt"));
        let r = kvmini(&[
            "--share",
            &format!("{d},tag=hostdir"),
            "--cmdline",
            "p9",
            "--irqchip",
            irqchip,
            "--timeout",
            "20s",
        ]);
        assert_eq!(r.status, Some(0), "{}", r.stderr);
        assert_eq!(
            r.stdout_str(),
            "p9: tag hostdir\np9: hello.txt: hello from the host\n\
             p9: .. of the root is the root\np9: a path as a name refused\n\
             p9: guest.txt written\n"
        );
        assert_eq!(std::fs::read(format!("{d}/guest.txt")).unwrap(), PATTERN);
    }
    // Nothing appeared beside the share.
    let names: Vec<_> = std::fs::read_dir(&dir.0).unwrap().collect();
    assert_eq!(names.len(), 1);
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn a_read_only_share_refuses_the_guests_create() {
    let dir = TempDir::new("share-ro");
    let d = share(&dir);
    let r = kvmini(&[
        "--share",
        &format!("{d},ro"),
        "--cmdline",
        "p9",
        "--timeout",
        "20s",
    ]);
    assert_eq!(r.status, Some(0), "{}", r.stderr);
    assert_eq!(
        r.stdout_str(),
        "p9: tag share0\np9: hello.txt: hello from the host\n\
         p9: .. of the root is the root\np9: a path as a name refused\n\
         p9: read-only, create refused\n"
    );
    assert!(!std::path::Path::new(&format!("{d}/guest.txt")).exists());
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn shares_follow_disks_and_each_other() {
    // The guest's client takes the first 9p device: the second share's tag
    // is not it, and a disk before them changes nothing.
    let dir = TempDir::new("share-order");
    let d = share(&dir);
    let other = dir.path("other");
    std::fs::create_dir(&other).unwrap();
    let img = dir.path("d.img");
    std::fs::write(&img, [0u8; 4096]).unwrap();
    let r = kvmini(&[
        "--disk",
        img.to_str().unwrap(),
        "--share",
        &d,
        "--share",
        &format!("{},tag=second", other.display()),
        "--cmdline",
        "p9",
        "--timeout",
        "20s",
    ]);
    assert_eq!(r.status, Some(0), "{}", r.stderr);
    assert!(
        r.stdout_str().starts_with("p9: tag share0\n"),
        "{}",
        r.stdout_str()
    );
    assert!(r.stdout_str().ends_with("p9: guest.txt written\n"));
}
