//! vCPU handles on a real VM: all-stop pause and resume, state read and
//! written, address translation, guest debugging, commands to vCPUs that
//! have stopped, and stopping a VM whose vCPUs are paused.
//!
//! Nothing in kvmini's command line pauses a vCPU yet, so these tests
//! build the VM the way Vmm::build does, from kvmini's public parts (boot
//! helpers, Vm, Vcpu, the handle channel), and run each vCPU on its own
//! thread under the vCPU seccomp filter: a KVM call the filter forgot
//! would kill the test process with SIGSYS.
//!
//! The tiny guest has no SMP mode: with two vCPUs the boot vCPU runs the
//! mode and the other one waits for a SIPI inside KVM_RUN, which is the
//! case where only a kick gets it out.

use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_guest_debug, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP};
use kvm_ioctls::Kvm;
use kvmini::arch::x86_64::layout::{CMDLINE_START, DEBUG_EXIT_PORT};
use kvmini::arch::x86_64::{boot_params, paging, regs};
use kvmini::bus::Bus;
use kvmini::control::{StopReason, VmControl};
use kvmini::devices::debug_exit::DebugExit;
use kvmini::loader::{self, KernelSource};
use kvmini::vcpu::exit::TripleFault;
use kvmini::vcpu::handle::{self, DebugStop};
use kvmini::vcpu::{self, pause_all, resume_all, CommandError, Vcpu, VcpuHandle};
use kvmini::vm::Vm;
use kvmini::{memory, seccomp};
use linux_loader::cmdline::Cmdline;
use vm_memory::{GuestAddress, GuestMemoryMmap};

const MEMORY: u64 = 64 << 20;
/// Bytes on COM1 for as long as any test runs: the boot vCPU keeps
/// exiting (LSR reads, THR writes) and its registers keep changing.
const FOREVER: &str = "flood=1000000000000";
/// Where the tiny guest's code lies (loaded at 1 MiB, well under 1 MiB).
const GUEST_CODE: std::ops::Range<u64> = 0x10_0000..0x20_0000;

/// A booted VM and its vCPU threads. Dropping it drops the handles first,
/// which ends and joins the threads, then the VM and its memory.
struct Guest {
    handles: Vec<VcpuHandle>,
    control: Arc<VmControl>,
    stops: Receiver<DebugStop>,
    _vm: Vm,
    _mem: GuestMemoryMmap,
}

fn boot(cmdline: &str, cpus: u8) -> Guest {
    vcpu::install_kick_handler().unwrap();
    let kvm = Kvm::new().unwrap();
    let mem = memory::create(MEMORY).unwrap();
    let kernel = loader::load_kernel(&mem, &KernelSource::Embedded).unwrap();
    let line = Cmdline::try_from(cmdline, cmdline.len() + 1).unwrap();
    linux_loader::loader::load_cmdline(&mem, GuestAddress(CMDLINE_START), &line).unwrap();
    let cr3 = paging::setup(&mem).unwrap();
    regs::write_gdt(&mem).unwrap();
    let e820 = memory::e820_map(MEMORY);
    let params = boot_params::linux_boot_params(&boot_params::LinuxBoot {
        header: kernel.setup_header,
        e820: &e820,
        cmdline_size: cmdline.len() as u32 + 1,
        initramfs: None,
        rsdp: None,
    })
    .unwrap();
    boot_params::write_linux(&mem, &params).unwrap();
    let vm = Vm::new(&kvm, &mem, true).unwrap();
    let cpuid = vcpu::supported_cpuid(&kvm).unwrap();

    let control = Arc::new(VmControl::new().unwrap());
    let mut io = Bus::new();
    let debug_exit = Arc::new(Mutex::new(DebugExit::new(
        control.clone(),
        kvmini::devices::debug_exit::ExitRule::Verbatim,
    )));
    io.insert(debug_exit, u64::from(DEBUG_EXIT_PORT), 1)
        .unwrap();
    let (io, mmio) = (Arc::new(io), Arc::new(Bus::new()));
    let (stop_tx, stops) = mpsc::channel();
    let mut handles = Vec::new();
    for id in 0..cpus {
        let mut vcpu = Vcpu::new(vm.fd(), id).unwrap();
        vcpu.configure_common(&cpuid, cpus).unwrap();
        vcpu.configure_lapic().unwrap();
        if id == 0 {
            vcpu.configure_boot(regs::Entry::Linux64(kernel.entry64), cr3)
                .unwrap();
        }
        let (pending, mailbox) = handle::channel(id, Some(stop_tx.clone()));
        let (io, mmio, control) = (io.clone(), mmio.clone(), control.clone());
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                seccomp::install(seccomp::vcpu_filter()).unwrap();
                vcpu.run(&io, &mmio, &control, TripleFault::Crash, None, &mailbox);
                Some(vcpu)
            })
            .unwrap();
        handles.push(pending.attach(thread));
    }
    Guest {
        handles,
        control,
        stops,
        _vm: vm,
        _mem: mem,
    }
}

/// Waits until `done` holds, at most `limit`.
fn within(limit: Duration, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Joins every thread, at most `limit` for all.
fn join_all(threads: Vec<JoinHandle<Option<Vcpu>>>, limit: Duration) {
    within(limit, "vCPU threads ending", || {
        threads.iter().all(JoinHandle::is_finished)
    });
    for t in threads {
        assert!(
            t.join().unwrap().is_some(),
            "a vCPU thread gave no vCPU back"
        );
    }
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn pause_all_parks_every_vcpu_and_the_state_moves_only_while_running() {
    let g = boot(FOREVER, 2);
    let mut rips = Vec::new();
    let mut ap_rip = None;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(5));
        pause_all(&g.handles).unwrap();
        let bsp = g.handles[0].state().unwrap();
        assert!(
            GUEST_CODE.contains(&bsp.regs.rip),
            "rip {:#x}",
            bsp.regs.rip
        );
        // Parked: nothing moves until it is resumed.
        std::thread::sleep(Duration::from_millis(10));
        let again = g.handles[0].state().unwrap();
        assert_eq!(again.regs, bsp.regs);
        assert_eq!(again.sregs, bsp.sregs);
        // The page tables map the first GiB one to one.
        assert_eq!(
            g.handles[0].translate(bsp.regs.rip).unwrap(),
            Some(bsp.regs.rip)
        );
        // The other vCPU still waits for its SIPI, at the reset vector.
        let ap = g.handles[1].state().unwrap();
        assert_eq!(*ap_rip.get_or_insert(ap.regs.rip), ap.regs.rip);
        assert!(ap.lapic.is_some());
        assert_eq!(ap.msrs.len(), vcpu::state::STATE_MSRS.len());
        rips.push(bsp.regs.rip);
        resume_all(&g.handles).unwrap();
    }
    rips.sort_unstable();
    rips.dedup();
    assert!(
        rips.len() >= 2,
        "the boot vCPU's rip never changed: {rips:x?}"
    );
    assert!(!g.control.is_stopping(), "{:?}", g.control.reason());
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn a_hundred_pause_resume_cycles_never_hang() {
    let g = boot(FOREVER, 2);
    let start = Instant::now();
    for i in 0..100 {
        pause_all(&g.handles).unwrap_or_else(|e| panic!("cycle {i}: {e}"));
        resume_all(&g.handles).unwrap_or_else(|e| panic!("cycle {i}: {e}"));
    }
    // Pausing one vCPU twice, resuming a running one: both are no-ops.
    g.handles[0].pause().unwrap();
    g.handles[0].pause().unwrap();
    g.handles[0].resume().unwrap();
    g.handles[0].resume().unwrap();
    eprintln!("100 all-stop cycles of 2 vCPUs: {:?}", start.elapsed());
    assert!(!g.control.is_stopping(), "{:?}", g.control.reason());
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn set_state_is_what_get_state_reads_back() {
    let g = boot(FOREVER, 1);
    let h = &g.handles[0];
    h.pause().unwrap();
    let before = h.state().unwrap();
    let mut changed = before.clone();
    changed.regs.rbx ^= 0x5a5a_5a5a_0000_ffff;
    changed.regs.r15 = 0x0123_4567_89ab_cdef;
    changed.debugregs.db[0] = 0x10_0000;
    h.set_state(&changed).unwrap();
    let read = h.state().unwrap();
    assert_eq!(read.regs, changed.regs);
    assert_eq!(read.sregs, changed.sregs);
    assert_eq!(read.debugregs.db, changed.debugregs.db);
    assert_eq!(read.fpu, changed.fpu);
    assert_eq!(read.lapic, changed.lapic);
    // The guest goes on where it was, with its own registers back.
    h.set_state(&before).unwrap();
    assert_eq!(h.state().unwrap().regs, before.regs);
    h.resume().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    h.pause().unwrap();
    let after = h.state().unwrap();
    assert!(
        GUEST_CODE.contains(&after.regs.rip),
        "rip {:#x}",
        after.regs.rip
    );
    assert!(!g.control.is_stopping(), "{:?}", g.control.reason());
    h.resume().unwrap();
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn commands_to_vcpus_that_stopped_are_errors_not_hangs() {
    let g = boot("exit=7", 2);
    // The boot vCPU ends with the guest; the other one is still in
    // KVM_RUN, waiting for a SIPI that never comes.
    within(Duration::from_secs(60), "the guest's exit", || {
        g.handles[0].is_finished()
    });
    assert_eq!(g.control.reason(), Some(StopReason::GuestExit(7)));
    let start = Instant::now();
    assert!(matches!(g.handles[0].pause(), Err(CommandError::Exited(0))));
    assert!(matches!(g.handles[0].state(), Err(CommandError::Exited(0))));
    // The kick gets the other vCPU out of KVM_RUN; it sees the stop, and
    // answers nothing more.
    let e = pause_all(&g.handles).unwrap_err();
    assert!(matches!(e, CommandError::Exited(0)), "{e}");
    within(Duration::from_secs(5), "vCPU 1 ending", || {
        g.handles[1].is_finished()
    });
    assert!(matches!(
        g.handles[1].resume(),
        Err(CommandError::Exited(1))
    ));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn stopping_the_vm_ends_paused_vcpus() {
    // The stop alone: paused vCPUs notice it without any command.
    let g = boot(FOREVER, 2);
    pause_all(&g.handles).unwrap();
    let start = Instant::now();
    g.control.stop(StopReason::Timeout);
    within(
        Duration::from_secs(3),
        "paused vCPUs ending on the stop",
        || g.handles.iter().all(VcpuHandle::is_finished),
    );
    eprintln!("paused vCPUs ended {:?} after the stop", start.elapsed());
    assert!(matches!(
        g.handles[0].resume(),
        Err(CommandError::Exited(0))
    ));

    // The way kvmini stops its vCPUs (stop, then finish and join every
    // handle): paused ones end as soon as their mailbox closes.
    let Guest {
        handles,
        control,
        _vm,
        _mem,
        ..
    } = boot(FOREVER, 2);
    pause_all(&handles).unwrap();
    control.stop(StopReason::Timeout);
    let start = Instant::now();
    let threads = handles.into_iter().map(VcpuHandle::finish).collect();
    join_all(threads, Duration::from_secs(1));
    eprintln!("finish and join of paused vCPUs: {:?}", start.elapsed());
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn single_step_stops_the_vcpu_and_reports_it() {
    let g = boot(FOREVER, 1);
    let h = &g.handles[0];
    h.pause().unwrap();
    let step = kvm_guest_debug {
        control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP,
        ..Default::default()
    };
    match h.set_guest_debug(&step) {
        Ok(()) => {}
        Err(e @ CommandError::Kvm { .. }) => {
            // The error comes back as an answer, at once: this host's KVM
            // (PVM) may have no guest debugging.
            eprintln!("single_step_stops_the_vcpu_and_reports_it: not run further: {e}");
            h.resume().unwrap();
            return;
        }
        Err(e) => panic!("{e}"),
    }
    h.resume().unwrap();
    let stop = g
        .stops
        .recv_timeout(Duration::from_secs(10))
        .expect("no debug stop reported");
    assert_eq!(stop.id, 0);
    assert_eq!(stop.exit.exception, 1, "{stop:?}"); // #DB
                                                    // Parked at the stop: it answers, and stays where it stopped.
    let at = h.state().unwrap();
    assert_eq!(at.regs.rip, stop.exit.pc);
    h.pause().unwrap();
    h.set_guest_debug(&kvm_guest_debug::default()).unwrap();
    h.resume().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert!(g.stops.try_recv().is_err(), "a stop after stepping ended");
    assert!(!g.control.is_stopping(), "{:?}", g.control.reason());
}
