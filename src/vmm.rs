//! The Vmm: assembles memory, the VM, devices and vCPUs, runs them, and
//! owns their lifetime. It knows no exit; the vCPU loop and the devices
//! report how the VM ends through [`VmControl`].

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use kvm_bindings::CpuId;
use kvm_ioctls::{Cap, Kvm};
use linux_loader::cmdline::Cmdline;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::register_signal_handler;

use crate::arch::layout::*;
use crate::arch::x86_64::{acpi, boot_params, paging, regs};
use crate::bus::{Bus, SharedDevice};
use crate::config::{BootProtocol, RebootPolicy, VmConfig};
use crate::console::queue::{OutQueue, QueueWriter};
use crate::console::watch::PatternWatch;
use crate::console::{self, Backend, Console, ConsoleLoop, Port, SerialLog, Stdin, Wiring};
use crate::control::{StopReason, VmControl};
use crate::device_manager::DeviceManager;
use crate::devices::virtio::block::{self, Disk};
use crate::devices::virtio::mmio::{self, MmioTransport};
use crate::devices::virtio::p9::{self, Share};
use crate::devices::virtio::Interrupt;
use crate::devices::{
    acpi_pm::AcpiPm, debug_exit::DebugExit, debug_exit::ExitRule, fw_cfg::FwCfg, i8042::I8042,
    post::PostCode, serial::SerialDevice,
};
use crate::event_loop;
use crate::loader::{self, LoadedKernel};
use crate::memory;
use crate::seccomp;
use crate::teardown::Reaper;
use crate::trace::BootTrace;
use crate::vcpu::{self, exit::TripleFault, handle::PendingHandle, Vcpu, VcpuHandle};
use crate::vm::{self, Vm};
use seccompiler::sock_filter;

/// Errors before the guest runs. Each maps to an exit status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/kvm (is KVM available and accessible to this user?)")]
    KvmOpen(#[source] kvm_ioctls::Error),
    #[error("/dev/kvm lacks {0}, which kvmini needs")]
    KvmCapability(&'static str),
    #[error("cannot read the CPUID that KVM supports")]
    Cpuid(#[source] kvm_ioctls::Error),
    #[error("--memory")]
    Memory(#[source] memory::Error),
    #[error(transparent)]
    Loader(#[from] loader::Error),
    #[error("--cmdline: {0}")]
    Cmdline(String),
    #[error("--cpus {0}: this host's KVM supports at most {1} vCPUs")]
    TooManyCpus(u8, usize),
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error(transparent)]
    Disk(#[from] block::Error),
    #[error(transparent)]
    Share(#[from] p9::Error),
    #[error("cannot set up virtio device {0}: {1}")]
    Virtio(String, String),
    #[error(transparent)]
    SerialBackend(#[from] console::backend::Error),
    #[error("--serial-log {0}: cannot create the file")]
    SerialLog(std::path::PathBuf, #[source] std::io::Error),
    #[error("--junit {0}: cannot create the file")]
    Junit(std::path::PathBuf, #[source] std::io::Error),
    #[error("{0}: kvmini cannot write one file twice, nor overwrite what it reads")]
    SameFile(String),
    #[error("--input {0}: cannot read the file")]
    Input(std::path::PathBuf, #[source] std::io::Error),
    #[error("{0} {1:?}: not a valid regular expression: {2}")]
    Pattern(&'static str, String, String),
    #[error("cannot write the multiboot information: {0}")]
    MultibootInfo(String),
    #[error("cannot write the boot structures into guest memory")]
    BootMemory(#[source] vm_memory::GuestMemoryError),
    #[error(transparent)]
    BootParams(#[from] boot_params::Error),
    #[error(transparent)]
    Acpi(#[from] acpi::Error),
    #[error("cannot set up the VM")]
    Vm(#[from] vm::Error),
    #[error("cannot set up the vCPUs")]
    Vcpu(#[from] vcpu::Error),
    #[error("cannot set up the devices")]
    Devices(#[from] crate::device_manager::Error),
    #[error("cannot set up the console")]
    Console(#[source] std::io::Error),
    #[error("cannot start a vCPU thread")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    Gdb(#[from] crate::gdb::Error),
    #[error(transparent)]
    Exec(#[from] crate::exec::Error),
}

impl Error {
    /// True when some cause down the chain is EMFILE or ENFILE.
    fn out_of_descriptors(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(c) = cause {
            let errno = if let Some(io) = c.downcast_ref::<std::io::Error>() {
                io.raw_os_error()
            } else {
                // kvm-ioctls' errors.
                c.downcast_ref::<vmm_sys_util::errno::Error>()
                    .map(|e| e.errno())
            };
            if matches!(errno, Some(libc::EMFILE | libc::ENFILE)) {
                return true;
            }
            cause = c.source();
        }
        false
    }

    /// The exit status for this error (see [`crate::status`]).
    pub fn exit_code(&self) -> u8 {
        use crate::status::*;
        if self.out_of_descriptors() {
            // Whichever step ran out, the host's limit is not the flag's
            // fault: a resource of kvmini's own failed.
            return INTERNAL_ERROR;
        }
        match self {
            Error::KvmOpen(_) | Error::KvmCapability(_) => KVM_UNAVAILABLE,
            Error::Memory(_)
            | Error::Loader(_)
            | Error::MultibootInfo(_)
            | Error::Cmdline(_)
            | Error::TooManyCpus(..)
            | Error::Config(_)
            | Error::Disk(_)
            | Error::Share(_)
            | Error::SerialBackend(_)
            | Error::SerialLog(..)
            | Error::Junit(..)
            | Error::SameFile(_)
            | Error::Gdb(_)
            | Error::Input(..)
            | Error::Pattern(..) => BAD_INPUT,
            Error::Exec(crate::exec::Error::Memfd(_)) => INTERNAL_ERROR,
            Error::Exec(_) => BAD_INPUT,
            // No wildcard: a new error must be given its status here.
            Error::Cpuid(_)
            | Error::BootMemory(_)
            | Error::BootParams(_)
            | Error::Acpi(_)
            | Error::Vm(_)
            | Error::Vcpu(_)
            | Error::Devices(_)
            | Error::Virtio(..)
            | Error::Console(_)
            | Error::Thread(_) => INTERNAL_ERROR,
        }
    }
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
fn kick_signal() -> i32 {
    vcpu::kick_signal()
}

fn compile(flag: &'static str, patterns: &[String]) -> Result<Vec<regex::bytes::Regex>, Error> {
    patterns
        .iter()
        .map(|p| {
            regex::bytes::Regex::new(p)
                .map_err(|e| Error::Pattern(flag, p.clone(), regex_reason(&e)))
        })
        .collect()
}

/// The gist of a regex error in one line (its Display spans several,
/// drawing a caret under the pattern).
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid pattern")
        .trim()
        .trim_start_matches("error: ")
        .to_string()
}

/// Refuses two outputs that are one file, or an output that is an input,
/// before either is truncated; then empties the files kvmini opened.
fn check_outputs(
    config: &VmConfig,
    ports: &[Port],
    junit: Option<&std::fs::File>,
) -> Result<(), Error> {
    let mut outputs: Vec<(String, &std::fs::File)> = Vec::new();
    let mut opened = Vec::new();
    if let (Some(p), Some(f)) = (&config.junit, junit) {
        outputs.push((format!("--junit {}", p.display()), f));
        opened.push(f);
    }
    if let (Some(p), Some(log)) = (&config.serial_log, ports[0].log()) {
        outputs.push((format!("--serial-log {}", p.display()), log.file()));
        opened.push(log.file());
    }
    let backends = std::iter::once(("--serial", &config.serial))
        .chain(config.serial2.as_ref().map(|b| ("--serial2", b)));
    for ((flag, cfg), port) in backends.zip(ports) {
        let Some(f) = port.backend().file() else {
            continue;
        };
        let name = match cfg {
            crate::config::SerialBackend::File(p) => {
                opened.push(f);
                format!("{flag} file={}", p.display())
            }
            _ => format!("{flag} stdio (standard output)"),
        };
        outputs.push((name, f));
    }
    let mut inputs: Vec<(String, &std::path::Path)> = Vec::new();
    if let crate::config::KernelSource::File(p) = &config.kernel {
        inputs.push((format!("--kernel {}", p.display()), p));
    }
    for (flag, p) in [
        ("--initramfs", &config.initramfs),
        ("--input", &config.input),
    ] {
        if let Some(p) = p {
            inputs.push((format!("{flag} {}", p.display()), p));
        }
    }
    for d in &config.disks {
        inputs.push((format!("--disk {}", d.path.display()), &d.path));
    }
    crate::host_file::check_outputs(&outputs, &inputs).map_err(Error::SameFile)?;
    for f in opened {
        crate::host_file::truncate(f).map_err(Error::Console)?;
    }
    Ok(())
}

/// `--input`'s bytes: a regular file, read whole without waiting on anyone.
fn read_input(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    crate::host_file::open_regular(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Opens the serial back ends, the log and the watchers: everything of the
/// console that outlives one boot of the guest.
fn console(
    config: &VmConfig,
    stdin: Stdin,
    start: Instant,
) -> Result<(Console, Option<std::fs::File>), Error> {
    let until = compile("--until", &config.until)?;
    let fail_on = compile("--fail-on", &config.fail_on)?;
    let input_after = compile("--input-after", config.input_after.as_slice())?
        .into_iter()
        .next();
    let input = config
        .input
        .as_ref()
        .map(|p| read_input(p).map_err(|e| Error::Input(p.clone(), e)))
        .transpose()?;
    let log = config
        .serial_log
        .as_ref()
        .map(|p| {
            SerialLog::create(p, config.serial_timestamps.then_some(start))
                .map_err(|e| Error::SerialLog(p.clone(), e))
        })
        .transpose()?;
    log::info!("COM1: back end {:?}", config.serial);
    if let Some(b) = &config.serial2 {
        log::info!("COM2: back end {b:?}");
    }
    if let Some(p) = &config.serial_log {
        log::info!("COM1: copied to --serial-log {}", p.display());
    }
    let mut ports = vec![Port::new(
        "COM1",
        Backend::open(&config.serial, "--serial", config.serial_wait)?,
        log,
    )];
    if let Some(b) = &config.serial2 {
        ports.push(Port::new(
            "COM2",
            Backend::open(b, "--serial2", config.serial2_wait)?,
            None,
        ));
    }
    let junit = config
        .junit
        .as_ref()
        .map(|p| crate::host_file::open_output(p).map_err(|e| Error::Junit(p.clone(), e)))
        .transpose()?;
    check_outputs(config, &ports, junit.as_ref())?;
    let has_input_after = input_after.is_some();
    let mut console = Console::new(
        ports,
        stdin,
        PatternWatch::new(until, fail_on, input_after),
        input,
        has_input_after,
    );
    if config.ktap {
        console.watch_ktap(config.ktap_keep_going);
    }
    Ok((console, junit))
}

/// `--ktap` after the VM stopped: a guest that shut down by itself before
/// its plan completed failed its run; every other ending keeps its own
/// status. Returns the reason, the summary line, and writes `--junit`.
fn ktap_outcome(
    config: &VmConfig,
    console: &Console,
    junit: Option<std::fs::File>,
    reason: StopReason,
) -> (StopReason, Option<String>) {
    let Some(k) = console.ktap() else {
        return (reason, None);
    };
    let mut reason = reason;
    let mut incomplete = None;
    if k.verdict().is_none() {
        let ended = match &reason {
            StopReason::PowerOff => Some("the guest powered off"),
            StopReason::Reset => Some("the guest rebooted"),
            StopReason::GuestExit(0) => Some("the guest wrote 0 to the debug-exit port"),
            _ => None,
        };
        let why = format!(
            "{}; {}",
            k.progress(),
            crate::status::describe_short(&reason)
        );
        if let Some(ended) = ended {
            reason = StopReason::KtapFailed(format!("{}; {ended}", k.progress()));
        }
        incomplete = Some(why);
    }
    if let (Some(path), Some(f)) = (&config.junit, junit) {
        let xml = k.junit(incomplete.as_deref());
        if let Err(e) = crate::host_file::write_all_waiting(&f, xml.as_bytes()) {
            reason =
                StopReason::HostError(format!("--junit {}: cannot write: {e}", path.display()));
        }
    }
    (reason, Some(k.summary()))
}

/// The main thread's subscribers that outlive one boot (the console is
/// the other).
struct LoopState {
    signals: event_loop::Signals,
    timeout: event_loop::Timeout,
}

/// How a run ended.
#[derive(Debug)]
pub struct Outcome {
    pub reason: StopReason,
    /// `--ktap`'s "ktap: N passed, N failed, N skipped" line.
    pub ktap_summary: Option<String>,
    /// The `--boot-trace` timeline, if asked for.
    pub boot_trace: Option<String>,
}

/// What the run's stages share besides the console.
struct Shared {
    /// The console thread's seccomp filter until the first boot installs
    /// it, once its vCPUs run; then (and with --no-seccomp) none.
    console_filter: Option<&'static [sock_filter]>,
    trace: Option<Arc<BootTrace>>,
    /// The vCPU threads' seccomp filter (with --no-seccomp: none).
    vcpu_filter: Option<&'static [sock_filter]>,
    /// The device worker threads' filter (with --no-seccomp: none).
    worker_filter: Option<&'static [sock_filter]>,
    /// The helper that destroys the VM after kvmini has reported; made
    /// before the VM (and before any thread).
    reaper: Option<Reaper>,
    /// `--gdb`'s listener, bound with the other inputs; the VM takes it.
    gdb: Option<crate::gdb::GdbListener>,
}

/// Runs the VM described by `config` until it ends, rebooting it in place
/// if the config says so. Returns why it ended.
pub fn run(config: &VmConfig) -> Result<Outcome, Error> {
    let start = Instant::now();
    // Everything that is bad input is found before /dev/kvm is opened:
    // contradicting flags, unreadable or foreign kernels, patterns, the
    // console's files and sockets (status 2 whatever KVM would say).
    config.check()?;
    // --exec: the VM that runs the command, and its initramfs.
    let prepared = match &config.exec {
        Some(exec) => Some(crate::exec::prepare(config, exec)?),
        None => None,
    };
    let (config, exec_initramfs) = match &prepared {
        Some(p) => (&p.config, Some(&p.initramfs)),
        None => (config, None),
    };
    config.check()?;
    memory::check_size(config.memory).map_err(Error::Memory)?;
    let mut files = loader::preflight(
        &config.kernel,
        config.boot,
        config.initramfs.as_deref(),
        &config.modules,
    )?;
    if let Some(f) = exec_initramfs {
        let f = f.try_clone().map_err(crate::exec::Error::Memfd)?;
        files.set_initramfs("(the --exec initramfs)".into(), f);
    }
    let disks = open_disks(config)?;
    let gdb = config.gdb.as_ref().map(crate::gdb::listen).transpose()?;
    let shares = open_shares(config)?;
    if config.seccomp {
        seccomp::prepare_allocator();
    }
    let signals = console::signal_fd().map_err(Error::Console)?;
    register_signal_handler(kick_signal(), vcpu::kick_handler)
        .map_err(|e| Error::Console(std::io::Error::from_raw_os_error(e.errno())))?;
    let stdin = Stdin::detect();
    let (mut console, junit) = console(config, stdin, start)?;
    let mut loop_state = LoopState {
        signals: event_loop::Signals(signals),
        timeout: event_loop::Timeout(config.timeout.map(|t| start + t)),
    };

    let trace = config.boot_trace.then(|| Arc::new(BootTrace::new(start)));
    let kvm = Kvm::new().map_err(Error::KvmOpen)?;
    if let Some(t) = &trace {
        t.mark("KVM opened");
    }
    for (cap, name) in [
        (Cap::Irqchip, "an in-kernel irqchip (KVM_CAP_IRQCHIP)"),
        (Cap::Pit2, "an in-kernel PIT (KVM_CAP_PIT2)"),
        (Cap::Irqfd, "irqfd (KVM_CAP_IRQFD)"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(Error::KvmCapability(name));
        }
    }
    if config.gdb.is_some() && !kvm.check_extension(Cap::SetGuestDebug) {
        return Err(Error::KvmCapability(
            "guest debugging (KVM_CAP_SET_GUEST_DEBUG), which --gdb needs",
        ));
    }
    let max = kvm.get_max_vcpus();
    if usize::from(config.cpus) > max {
        return Err(Error::TooManyCpus(config.cpus, max));
    }
    let restart = config.on_reboot == RebootPolicy::Restart;
    let uses_stdin = console.ports.iter().any(|p| p.is_stdio());
    let _raw = match stdin {
        Stdin::Tty if uses_stdin => Some(console::RawTerminal::enter().map_err(Error::Console)?),
        _ => None,
    };
    let mut shared = Shared {
        console_filter: config.seccomp.then(|| seccomp::console_filter(restart)),
        trace,
        vcpu_filter: config.seccomp.then(seccomp::vcpu_filter),
        worker_filter: config
            .seccomp
            .then(|| seccomp::filter(seccomp::ThreadKind::Worker)),
        reaper: None,
        gdb,
    };
    let mut vmm = Vmm::build(
        &kvm,
        config,
        console.ports.len(),
        &disks,
        &shares,
        &mut files,
        &mut shared,
    )?;
    if config.serial_wait || config.serial2_wait {
        // `,wait`: the VM is ready; it starts when the clients are there
        // (signals and --timeout are served meanwhile).
        let done = std::cell::Cell::new(false);
        let mut waiter = console::WaitForClients::new(
            &mut console.ports,
            &[config.serial_wait, config.serial2_wait],
            &done,
        );
        let mut stop = event_loop::Stop(&vmm.control);
        event_loop::run_until(
            &mut [
                &mut stop,
                &mut loop_state.signals,
                &mut loop_state.timeout,
                &mut waiter,
            ],
            &vmm.control,
            &|| done.get(),
        );
    }
    loop {
        let reason = vmm.run(&mut console, &mut loop_state, &mut shared);
        let mut reason = match (console.verdict(), reason) {
            // --fail-on / --until saw output the guest printed before it
            // stopped: that decides, whatever the guest did next.
            (Some(verdict), _) => verdict,
            // A panicking Linux reboots (panic=-1) or triple-faults.
            (None, StopReason::Reset | StopReason::Crash(_)) if console.panicked() => {
                StopReason::Panic
            }
            (None, r) => r,
        };
        if reason == StopReason::Reset && restart {
            log::info!("guest rebooted; starting it again");
            console.rebooted();
            if let Some(t) = &shared.trace {
                t.rebooted();
            }
            match vmm.reset(config, &mut files) {
                Ok(()) => continue,
                Err(e) => {
                    reason = StopReason::HostError(format!("cannot reboot the guest in place: {e}"))
                }
            }
        }
        let (reason, ktap_summary) = ktap_outcome(config, &console, junit, reason);
        if let Some(g) = &mut vmm.gdb {
            g.vm_stopped(crate::status::code(&reason));
        }
        vmm.finish();
        return Ok(Outcome {
            reason,
            ktap_summary,
            boot_trace: shared.trace.map(|t| t.render()),
        });
    }
}

/// One VM for the whole run: a guest that reboots in place with
/// `--on-reboot restart` gets the same VM, memory, devices and threads
/// back, reset ([`Vmm::reset`]).
struct Vmm {
    // Drop order: vCPUs and the VM before the memory they map.
    vcpus: Vcpus,
    vm: Arc<Vm>,
    mem: GuestMemoryMmap,
    control: Arc<VmControl>,
    devices: DeviceManager,
    /// The buses, referenced here until the vCPUs are joined: their
    /// devices must be dropped on this thread, whose filter allows closing
    /// their descriptors (a vCPU's does not).
    io: Arc<Bus>,
    mmio: Arc<Bus>,
    wiring: Vec<Wiring>,
    trace: Option<Arc<BootTrace>>,
    /// COM1 writes may be batched in the kernel once output is heavy.
    coalesce: bool,
    /// COM1's writes are batched already (a zone is registered once per VM).
    coalescing: std::cell::Cell<bool>,
    /// Where the first boot entered the kernel: a reboot loads the same.
    entry: (regs::Entry, u64),
    /// `--gdb`'s server, for the whole run.
    gdb: Option<crate::gdb::GdbServer>,
}

/// The vCPU threads: waiting for their first go, then running or parked.
enum Vcpus {
    Starting(Starting),
    Started(Vec<VcpuThread>),
}

impl Vmm {
    fn build(
        kvm: &Kvm,
        config: &VmConfig,
        ports: usize,
        disks: &[Arc<Disk>],
        shares: &[Share],
        files: &mut loader::BootFiles,
        shared: &mut Shared,
    ) -> Result<Self, Error> {
        // 1. The device plan: every device with its bus range and its
        // interrupt, and what it tells the guest (command line, DSDT). It
        // needs no VM; interrupts are connected once the VM exists.
        let control = Arc::new(VmControl::new().map_err(Error::Console)?);
        let mut devices = DeviceManager::new();
        devices.confine_workers(shared.worker_filter, control.clone());
        let wiring = plan_devices(
            &mut devices,
            ports,
            &Platform::of(config),
            &control,
            &shared.trace,
        )?;
        for (i, disk) in disks.iter().enumerate() {
            plan_disk(&mut devices, i, disk.clone())?;
        }
        for (i, share) in shares.iter().enumerate() {
            plan_share(&mut devices, i, disks.len() + i, share)?;
        }

        // 2. Memory and the kernel, 3. the boot data, from the plan. None
        // of it needs a VM, so bad input is caught before KVM is asked for
        // anything.
        let mem = memory::create(config.memory).map_err(Error::Memory)?;
        let entry = load_guest(config, &mem, &devices, files)?;

        let triple_fault = if config.triple_fault_reboots() {
            TripleFault::Reset
        } else {
            TripleFault::Crash
        };

        // The VM, its memory, then its vCPUs, one after the other on this
        // thread, while each vCPU's thread (started first) installs its
        // seccomp filter and waits for its vCPU and the go from Vmm::run:
        // setup costs one thread's worth of CPU, and the filters' install
        // overlaps it (the README's Benchmarks section has what other orders cost).
        // Without the irqchip KVM destroys a VM in well under a millisecond
        // here, less than the helper costs; with it, it waits for grace
        // periods (see the README's Benchmarks section), and the helper takes that wait.
        // KVMINI_TEARDOWN=sync keeps the destruction on kvmini's path: under
        // QEMU's emulated nested SVM (scripts/nested-ci) a VM destroyed
        // while the next one starts appears to wedge the outer VM.
        let sync = std::env::var_os("KVMINI_TEARDOWN").is_some_and(|v| v == "sync");
        if config.wants_irqchip() && !sync {
            shared.reaper = match Reaper::start() {
                Ok(r) => Some(r),
                Err(e) => {
                    log::debug!("the VM is destroyed on kvmini's own path: {e}");
                    None
                }
            };
        }
        // 4. The VM: memory, then the irqchip; then the devices'
        // interrupts, 5. the vCPUs.
        let mut vm = Vm::new(kvm, &mem, config.wants_irqchip())?;
        let restart = config.on_reboot == RebootPolicy::Restart;
        if restart {
            vm.save_reset_state()?;
        }
        let vm = Arc::new(vm);
        if let Some(r) = &shared.reaper {
            if let Err(e) = r.hand_over(vm.fd().as_raw_fd()) {
                log::debug!("the VM is destroyed on kvmini's own path: {e}");
            }
        }
        devices.attach(&vm, &mem)?;
        let (io, mmio) = devices.buses();
        // COM1's writes may be batched without the irqchip, once output is
        // heavy (vcpu::coalesced says why and what that guarantees).
        let coalesce = !config.wants_irqchip() && kvm.check_extension(Cap::CoalescedPio);
        log::info!(
            "{} vCPU{}, {} MiB of RAM, in-kernel irqchip and PIT {}",
            config.cpus,
            if config.cpus == 1 { "" } else { "s" },
            config.memory >> 20,
            match (config.irqchip, config.wants_irqchip()) {
                (crate::config::IrqchipMode::On, _) => "on (--irqchip on)",
                (crate::config::IrqchipMode::Off, _) => "off (--irqchip off)",
                (_, true) if config.cpus > 1 => "on (auto: more than one vCPU)",
                (_, true) => "on (auto: a kernel other than the tiny guest)",
                (_, false) => "off (auto: the tiny guest on one vCPU polls)",
            }
        );
        let gdb = match shared.gdb.take() {
            Some(l) => Some(
                crate::gdb::GdbServer::new(l, mem.clone(), control.clone())
                    .map_err(Error::Console)?,
            ),
            None => None,
        };
        let debug = gdb.as_ref().map(|g| g.debug_sink());
        let mut vcpus = Starting::default();
        for id in 0..config.cpus {
            vcpus.spawn(
                id,
                shared.vcpu_filter,
                triple_fault,
                control.clone(),
                debug.clone(),
            )?;
        }
        let cpuid = vcpu::supported_cpuid(kvm).map_err(Error::Cpuid)?;
        for id in 0..config.cpus {
            let setup = VcpuSetup {
                id,
                cpus: config.cpus,
                irqchip: config.wants_irqchip(),
                coalesce,
                boot: (id == 0).then_some(entry),
                keep_reset_state: restart,
            };
            vcpus.add(create_vcpu(&setup, &vm, &cpuid)?);
        }

        Ok(Self {
            vcpus: Vcpus::Starting(vcpus),
            vm,
            mem,
            control,
            devices,
            io,
            mmio,
            wiring,
            trace: shared.trace.clone(),
            coalesce,
            coalescing: std::cell::Cell::new(false),
            entry,
            gdb,
        })
    }

    /// Runs the vCPUs until the VM stops, then parks every vCPU thread out
    /// of the guest (see [`Vmm::finish`] and [`Vmm::reset`] for what comes
    /// next).
    fn run(
        &mut self,
        console: &mut Console,
        loop_state: &mut LoopState,
        shared: &mut Shared,
    ) -> StopReason {
        if let Some(t) = &self.trace {
            t.mark("VM ready");
        }
        match &mut self.vcpus {
            Vcpus::Starting(starting) => {
                let threads = starting.go(&Go {
                    io: self.io.clone(),
                    mmio: self.mmio.clone(),
                    trace: self.trace.clone(),
                });
                if let Some(g) = &mut self.gdb {
                    g.set_vcpus(threads.iter().map(|t| Rc::downgrade(&t.handle)).collect());
                }
                self.vcpus = Vcpus::Started(threads);
            }
            Vcpus::Started(threads) => {
                for t in threads.iter() {
                    let _ = t.start.send(Start::Run);
                }
            }
        }
        if let Some(f) = shared.console_filter.take() {
            if let Err(e) = seccomp::install(f) {
                self.control
                    .stop(StopReason::HostError(format!("console thread: {e}")));
            }
        }
        let (vm, coalescing) = (&self.vm, &self.coalescing);
        let batch_com1 = || {
            if coalescing.replace(true) {
                return;
            }
            if let Err(e) = vm.coalesce_port_writes(COM1_PORT) {
                log::debug!("COM1 writes stay unbatched: {e}");
            }
        };
        let on_heavy_output: Option<&dyn Fn()> = if self.coalesce {
            Some(&batch_com1)
        } else {
            None
        };
        let mut console_loop = ConsoleLoop::new(console, &self.wiring, on_heavy_output);
        let mut stop = event_loop::Stop(&self.control);
        // Batched writes are drained by a vCPU thread; one is kicked every
        // tick so none waits for the guest's next exit (vcpu::coalesced).
        let kick_one = || {
            if let Vcpus::Started(threads) = &self.vcpus {
                if let Some(t) = threads.first() {
                    t.handle.kick();
                }
            }
        };
        let mut ring_tick = vcpu::coalesced::RingTick::new(coalescing, &kick_one);
        let mut subscribers: Vec<&mut dyn event_loop::Subscriber> = vec![
            &mut stop,
            &mut loop_state.signals,
            &mut loop_state.timeout,
            &mut ring_tick,
            &mut console_loop,
        ];
        if let Some(g) = &mut self.gdb {
            subscribers.push(g);
        }
        event_loop::run(&mut subscribers, &self.control);
        drop(subscribers);
        // A vCPU may be waiting for room in a full output queue: close the
        // queues while kicking, then deliver what they hold.
        for w in &self.wiring {
            w.queue.close();
        }
        if let Vcpus::Started(threads) = &self.vcpus {
            park(threads);
        }
        console.finish(&self.control, &self.wiring);
        if let Some(t) = &self.trace {
            t.mark("VM stopped");
        }
        self.control
            .reason()
            .unwrap_or_else(|| StopReason::HostError("the VM stopped without a reason".into()))
    }

    /// The machine's reset, between two boots of a guest rebooted in place
    /// (every vCPU parked): devices, memory (zeros again), the kernel, the
    /// initramfs and the boot data loaded again from the files kept open,
    /// the interrupt controllers and PIT, and each vCPU, back as they were
    /// before the first boot. Nothing is created: no VM, vCPU, thread, file
    /// or eventfd, which is what keeps the restart filter small.
    fn reset(&mut self, config: &VmConfig, files: &mut loader::BootFiles) -> Result<(), String> {
        self.io.reset();
        self.mmio.reset();
        memory::zero(&self.mem).map_err(|e| format!("cannot clear guest memory: {e}"))?;
        if let Some(g) = &mut self.gdb {
            g.memory_reset();
        }
        let entry =
            load_guest(config, &self.mem, &self.devices, files).map_err(|e| e.to_string())?;
        if entry != self.entry {
            return Err("the kernel's entry point changed since the first boot".into());
        }
        self.vm.reset().map_err(|e| e.to_string())?;
        let Vcpus::Started(threads) = &self.vcpus else {
            return Err("the vCPUs never ran".into());
        };
        for t in threads {
            let _ = t.start.send(Start::Reset);
        }
        // Every vCPU answers, even after the first failure: none may still
        // be resetting when the next boot starts.
        let answers: Vec<_> = threads.iter().map(|t| t.parked.recv()).collect();
        for answer in answers {
            match answer {
                Ok(r) => r?,
                Err(_) => return Err("a vCPU thread has ended".into()),
            }
        }
        for w in &self.wiring {
            w.queue.reopen();
        }
        self.control.restart();
        Ok(())
    }

    /// Ends the VM: every vCPU thread and device worker is stopped and
    /// joined.
    fn finish(mut self) {
        if let Vcpus::Started(threads) = std::mem::replace(&mut self.vcpus, Vcpus::Started(vec![]))
        {
            stop_threads(threads);
        }
        self.devices.stop_workers();
    }
}

/// Loads the kernel, the initramfs and the boot data (command line with
/// the devices' fragments, page tables, GDT, ACPI tables with their DSDT
/// nodes, boot_params or the PVH start info) into `mem`; returns where the
/// boot vCPU enters and its page tables.
fn load_guest(
    config: &VmConfig,
    mem: &GuestMemoryMmap,
    devices: &DeviceManager,
    files: &mut loader::BootFiles,
) -> Result<(regs::Entry, u64), Error> {
    let kernel = files.load_kernel(mem)?;
    if kernel.format == loader::Format::Multiboot {
        return load_multiboot_guest(config, mem, devices, files, &kernel);
    }
    log::info!(
        "kernel: {:?} ({}), loaded up to {:#x}, 64-bit entry {:#x}{}",
        kernel.format,
        match &config.kernel {
            crate::config::KernelSource::Embedded => "the built-in tiny guest".to_string(),
            crate::config::KernelSource::File(p) => p.display().to_string(),
        },
        kernel.end,
        kernel.entry64,
        kernel
            .pvh_entry
            .map_or(String::new(), |e| format!(", PVH entry {e:#x}"))
    );
    let initramfs = files.load_initramfs(mem, &kernel)?;
    if let Some((addr, size)) = initramfs {
        log::info!("initramfs: {size} bytes at {addr:#x}");
    }
    let cmdline = devices.cmdline(config.effective_cmdline());
    let cmdline_size = write_cmdline(mem, &cmdline, &kernel)?;
    log::info!("command line at {CMDLINE_START:#x}: {cmdline:?}");
    let cr3 = paging::setup(mem).map_err(Error::BootMemory)?;
    regs::write_gdt(mem).map_err(Error::BootMemory)?;
    let rsdp = acpi::write_tables(mem, config.cpus, devices.dsdt())?;
    let e820 = memory::e820_map(config.memory);
    log::info!(
        "boot data: GDT at {BOOT_GDT_START:#x}, page tables at {cr3:#x} (identity map of \
         {IDENTITY_MAP_GIB} GiB), ACPI RSDP at {rsdp:#x}, {}",
        match config.boot {
            BootProtocol::Linux64 => format!("zero page at {ZERO_PAGE_START:#x}"),
            BootProtocol::Pvh => format!("PVH start_info at {PVH_INFO_START:#x}"),
            BootProtocol::Multiboot => "multiboot".into(),
        }
    );
    for e in &e820 {
        log::info!(
            "memory map: {:#x}-{:#x} {}",
            e.addr,
            e.addr + e.size - 1,
            if e.kind == memory::E820_RAM {
                "RAM"
            } else {
                "reserved"
            }
        );
    }
    let entry = match config.boot {
        BootProtocol::Linux64 => {
            let params = boot_params::linux_boot_params(&boot_params::LinuxBoot {
                header: kernel.setup_header,
                e820: &e820,
                cmdline_size,
                initramfs,
                rsdp: Some(rsdp),
            })?;
            boot_params::write_linux(mem, &params)?;
            regs::Entry::Linux64(kernel.entry64)
        }
        // preflight() refused --boot multiboot for anything but a
        // multiboot kernel, which returned above.
        BootProtocol::Pvh | BootProtocol::Multiboot => {
            let entry = pvh_entry(config, &kernel)?;
            let start_info = boot_params::write_pvh(mem, &e820, initramfs, Some(rsdp))?;
            regs::Entry::Pvh { entry, start_info }
        }
    };
    Ok((entry, cr3))
}

/// The first word of the built-in tiny guest's multiboot command line,
/// where a file kernel has its path.
pub const MULTIBOOT_TINY_GUEST_NAME: &str = "kvmini-tiny-guest";

/// [`load_guest`] for a multiboot kernel: the modules after it, the
/// command line (the kernel's path, then `--cmdline`'s words: none by
/// default for a file, as QEMU gives none), the ACPI tables
/// (found by scanning 0xe0000.. as well), and the multiboot information.
fn load_multiboot_guest(
    config: &VmConfig,
    mem: &GuestMemoryMmap,
    devices: &DeviceManager,
    files: &mut loader::BootFiles,
    kernel: &LoadedKernel,
) -> Result<(regs::Entry, u64), Error> {
    log::info!(
        "kernel: multiboot ({}), loaded up to {:#x}, 32-bit entry {:#x}",
        match &config.kernel {
            crate::config::KernelSource::Embedded => "the built-in tiny guest".to_string(),
            crate::config::KernelSource::File(p) => p.display().to_string(),
        },
        kernel.end,
        kernel.entry64
    );
    let modules = files.load_modules(mem, kernel)?;
    for (i, m) in modules.iter().enumerate() {
        log::info!(
            "module {i}: {} bytes at {:#x}, string {:?}",
            m.end - m.start,
            m.start,
            String::from_utf8_lossy(&m.cmdline)
        );
    }
    let given = match (&config.cmdline, &config.kernel) {
        (Some(c), _) => c.as_str(),
        (None, crate::config::KernelSource::Embedded) => crate::config::DEFAULT_GUEST_CMDLINE,
        (None, crate::config::KernelSource::File(_)) => "",
    };
    // The multiboot command line starts with the kernel's own path, as GRUB
    // and QEMU give it: kvm-unit-tests takes that first word as argv[0].
    let path = match &config.kernel {
        crate::config::KernelSource::Embedded => MULTIBOOT_TINY_GUEST_NAME.to_string(),
        crate::config::KernelSource::File(p) => p.display().to_string(),
    };
    let cmdline = devices.cmdline(given);
    let cmdline = if cmdline.is_empty() {
        path
    } else {
        format!("{path} {cmdline}")
    };
    // The checks every command line gets; the multiboot information holds
    // the copy the kernel reads. Nothing else is written below 1 MiB but
    // the GDT, the MBI and the ACPI tables (multiboot::LOW_RESERVED): no
    // page tables (the kernel starts without paging), no Linux boot data,
    // so a kernel may load in the rest of low memory.
    check_cmdline(&cmdline, kernel)?;
    regs::write_gdt(mem).map_err(Error::BootMemory)?;
    let rsdp = acpi::write_tables(mem, config.cpus, devices.dsdt())?;
    let e820 = memory::e820_map(config.memory);
    let mods: Vec<loader::multiboot::Module> = modules
        .iter()
        .map(|m| loader::multiboot::Module {
            start: m.start,
            end: m.end,
            cmdline: &m.cmdline,
        })
        .collect();
    let info = loader::multiboot::write_info(
        mem,
        &loader::multiboot::InfoInput {
            e820: &e820,
            cmdline: cmdline.as_bytes(),
            modules: &mods,
        },
    )
    .map_err(Error::MultibootInfo)?;
    log::info!(
        "boot data: multiboot information at {info:#x}, command line {cmdline:?}, ACPI RSDP at \
         {rsdp:#x}"
    );
    // CR3 is 0: paging is off at a multiboot entry.
    Ok((
        regs::Entry::Multiboot {
            entry: kernel.entry64,
            info: u64::from(info),
        },
        0,
    ))
}

/// How often a vCPU thread parked out of the guest answers its mailbox.
const PARKED_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// How one vCPU is set up.
struct VcpuSetup {
    id: u8,
    cpus: u8,
    irqchip: bool,
    coalesce: bool,
    /// Entry point and page tables, for the boot vCPU only.
    boot: Option<(regs::Entry, u64)>,
    /// Keep its configured state, for reboots in place.
    keep_reset_state: bool,
}

/// What a configured vCPU thread waits for before it enters the guest:
/// the buses, which exist only once the devices are built.
#[derive(Clone)]
struct Go {
    io: Arc<Bus>,
    mmio: Arc<Bus>,
    trace: Option<Arc<BootTrace>>,
}

/// What a vCPU thread is told while it is out of the guest.
enum Start {
    /// The first boot: its vCPU and the buses.
    First(Vcpu, Go),
    /// Reset the vCPU to its first state (a reboot in place), then answer.
    Reset,
    /// Enter the guest again.
    Run,
}

/// What a vCPU thread says when it has left the guest (Ok) or when it has
/// reset its vCPU (the reset's result).
type Parked = Result<(), String>;

/// A vCPU thread that waits for its vCPU and the go.
struct Waiting {
    handle: JoinHandle<Option<Vcpu>>,
    start: Sender<Start>,
    parked: Receiver<Parked>,
    /// Its handle, attached to the thread with the go.
    pending: PendingHandle,
}

/// A vCPU thread once it has had its go: its handle, and the channels by
/// which it is parked out of the guest between two boots.
struct VcpuThread {
    // Declared first, dropped first: a parked thread waits on it, and the
    // handle's drop joins the thread.
    start: Sender<Start>,
    parked: Receiver<Parked>,
    /// Shared with `--gdb`'s server, which holds it weakly: the only
    /// strong reference is this one, so its drop still joins the thread.
    handle: Rc<VcpuHandle>,
}

/// vCPU threads from their start until Vmm::run lets them into the guest.
/// Dropping it before then (a setup error) ends and joins them.
#[derive(Default)]
struct Starting {
    threads: Vec<Waiting>,
    /// The configured vCPUs, in the order of `threads`.
    vcpus: Vec<Vcpu>,
}

impl Starting {
    /// Starts the thread of vCPU `id`. It installs its seccomp filter and
    /// waits for its vCPU and the [`Go`]; then it runs the vCPU, serving
    /// its handle's commands, until the VM stops. Then it parks, out of the
    /// guest, until it is told to reset its vCPU or to run it again, or
    /// until its start channel closes: then it returns the vCPU (its fd
    /// closes when the caller drops it).
    fn spawn(
        &mut self,
        id: u8,
        filter: Option<&'static [sock_filter]>,
        triple_fault: TripleFault,
        control: Arc<VmControl>,
        debug: Option<crate::gdb::DebugSink>,
    ) -> Result<(), Error> {
        let (start, start_rx) = mpsc::channel::<Start>();
        let (parked_tx, parked) = mpsc::channel::<Parked>();
        // Without --gdb a debug exit (which nothing can ask for) stops the
        // VM; with it, stops go to the gdb server, and with its wait every
        // vCPU is held before its first instruction.
        let (pending, mailbox) = match debug {
            Some(d) => {
                let (pending, mailbox) = vcpu::handle::channel(id, Some(d.stops));
                if d.hold {
                    pending.hold();
                }
                (pending, mailbox.with_wake(d.wake))
            }
            None => vcpu::handle::channel(id, None),
        };
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                if let Some(f) = filter {
                    if let Err(e) = seccomp::install(f) {
                        control.stop(StopReason::HostError(format!("vCPU {id}: {e}")));
                        return None;
                    }
                }
                // No go: the setup failed elsewhere and the VM never runs.
                let Ok(Start::First(mut vcpu, go)) = start_rx.recv() else {
                    return None;
                };
                loop {
                    vcpu.run(
                        &go.io,
                        &go.mmio,
                        &control,
                        triple_fault,
                        go.trace.as_deref(),
                        &mailbox,
                    );
                    if parked_tx.send(Ok(())).is_err() {
                        return Some(vcpu);
                    }
                    loop {
                        // Commands sent as the VM stopped (a debugger's
                        // resume racing the guest's exit) are answered
                        // while parked, within PARKED_POLL.
                        let next = match start_rx.recv_timeout(PARKED_POLL) {
                            Err(mpsc::RecvTimeoutError::Timeout) => {
                                mailbox.answer_stopped();
                                continue;
                            }
                            Err(mpsc::RecvTimeoutError::Disconnected) => Err(mpsc::RecvError),
                            Ok(s) => Ok(s),
                        };
                        match next {
                            Ok(Start::Reset) => {
                                if parked_tx.send(vcpu.reset()).is_err() {
                                    return Some(vcpu);
                                }
                            }
                            Ok(Start::Run) => break,
                            Ok(Start::First(..)) | Err(_) => return Some(vcpu),
                        }
                    }
                }
            })
            .map_err(Error::Thread)?;
        self.threads.push(Waiting {
            handle,
            start,
            parked,
            pending,
        });
        Ok(())
    }

    /// Keeps the next configured vCPU for the thread started in its order.
    fn add(&mut self, vcpu: Vcpu) {
        self.vcpus.push(vcpu);
    }

    /// Hands every vCPU to its thread and lets it into the guest.
    fn go(&mut self, go: &Go) -> Vec<VcpuThread> {
        let vcpus = std::mem::take(&mut self.vcpus);
        self.threads
            .drain(..)
            .zip(vcpus)
            .map(|(thread, vcpu)| {
                // A thread that cannot receive has already stopped the VM;
                // its vCPU comes back in the error and is dropped here.
                let _ = thread.start.send(Start::First(vcpu, go.clone()));
                VcpuThread {
                    handle: Rc::new(thread.pending.attach(thread.handle)),
                    start: thread.start,
                    parked: thread.parked,
                }
            })
            .collect()
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        // Without a go, each thread returns once its filter is installed.
        for thread in self.threads.drain(..) {
            drop(thread.start);
            let _ = thread.handle.join();
        }
    }
}

/// One vCPU, created and configured.
fn create_vcpu(setup: &VcpuSetup, vm: &Vm, cpuid: &CpuId) -> Result<Vcpu, Error> {
    let mut vcpu = Vcpu::new(vm.fd(), setup.id)?;
    if setup.coalesce {
        vcpu.map_coalesced_ring()?;
    }
    vcpu.configure_common(cpuid, setup.cpus)?;
    if setup.irqchip {
        vcpu.configure_lapic()?;
    }
    if let Some((entry, cr3)) = setup.boot {
        vcpu.configure_boot(entry, cr3)?;
    }
    if setup.keep_reset_state {
        vcpu.save_reset_state()?;
    }
    Ok(vcpu)
}

/// What the legacy devices tell the guest about the machine.
#[derive(Debug, Clone, Copy)]
pub struct Platform {
    /// Guest RAM in bytes (fw_cfg's RAM size).
    pub memory: u64,
    pub cpus: u8,
    pub debug_exit: ExitRule,
}

impl Platform {
    pub fn of(config: &VmConfig) -> Self {
        Self {
            memory: config.memory,
            cpus: config.cpus,
            debug_exit: config.debug_exit,
        }
    }
}

/// The legacy PC devices every guest gets, and `ports` UARTs (COM1, then
/// COM2) each writing into a fresh output queue; returns the UARTs' wiring.
/// (Public for the fuzz targets, which test the devices as kvmini wires
/// them.)
pub fn plan_devices(
    devices: &mut DeviceManager,
    ports: usize,
    platform: &Platform,
    control: &Arc<VmControl>,
    trace: &Option<Arc<BootTrace>>,
) -> Result<Vec<Wiring>, Error> {
    let mut wiring = Vec::with_capacity(ports);
    for (name, port, irq) in [("COM1", COM1_PORT, COM1_IRQ), ("COM2", COM2_PORT, COM2_IRQ)]
        .into_iter()
        .take(ports)
    {
        let irq_evt = devices.legacy_irq(name, irq)?;
        let rx_ready = EventFd::new(EFD_NONBLOCK).map_err(Error::Console)?;
        let queue = Arc::new(OutQueue::new().map_err(Error::Console)?);
        let device = Arc::new(Mutex::new(
            SerialDevice::new(
                name,
                irq_evt,
                rx_ready.try_clone().map_err(Error::Console)?,
                Box::new(QueueWriter::new(queue.clone(), trace.clone())),
            )
            .map_err(Error::Console)?,
        ));
        devices.add_port_device(name, device.clone(), port, UART_PORT_COUNT)?;
        wiring.push(Wiring {
            device,
            queue,
            rx_ready,
        });
    }
    let i8042: SharedDevice = Arc::new(Mutex::new(I8042::new(control.clone())));
    devices.add_port_device("i8042", i8042, I8042_PORT, I8042_PORT_COUNT)?;
    let debug_exit: SharedDevice = Arc::new(Mutex::new(DebugExit::new(
        control.clone(),
        platform.debug_exit,
    )));
    devices.add_port_device(
        "debug-exit",
        debug_exit,
        DEBUG_EXIT_PORT,
        DEBUG_EXIT_PORT_COUNT,
    )?;
    let fw_cfg: SharedDevice = Arc::new(Mutex::new(FwCfg::new(
        platform.memory,
        u16::from(platform.cpus),
    )));
    devices.add_port_device("fw_cfg", fw_cfg, FW_CFG_PORT, FW_CFG_PORT_COUNT)?;
    let pm: SharedDevice = Arc::new(Mutex::new(AcpiPm::new(control.clone())));
    devices.add_port_device("ACPI PM", pm, PM1A_EVT_PORT, ACPI_PORT_COUNT)?;
    let post: SharedDevice = Arc::new(Mutex::new(PostCode::new(trace.clone())));
    devices.add_port_device("POST", post, POST_PORT, 1)?;
    Ok(wiring)
}

/// Opens every `--disk` image (and takes its lock) before KVM is opened;
/// the same image twice is refused, however it is spelled.
fn open_disks(config: &VmConfig) -> Result<Vec<Arc<Disk>>, Error> {
    let mut disks: Vec<Arc<Disk>> = Vec::new();
    for d in &config.disks {
        // A second open of the same image would fail on its own lock, with
        // a message that blames another process.
        let same = std::fs::metadata(&d.path).ok().and_then(|m| {
            use std::os::unix::fs::MetadataExt;
            let id = (m.dev(), m.ino());
            disks.iter().find(|o| o.identity() == Some(id))
        });
        if same.is_some() {
            return Err(block::Error::Twice(d.path.clone()).into());
        }
        disks.push(Arc::new(Disk::open(&d.path, d.read_only, &d.serial)?));
    }
    Ok(disks)
}

/// Checks every `--share` directory and tag before KVM is opened (two
/// shares may not have one tag), and fits their fid limits to the
/// process's descriptor limit.
fn open_shares(config: &VmConfig) -> Result<Vec<Share>, Error> {
    let mut shares: Vec<Share> = Vec::new();
    for (i, s) in config.shares.iter().enumerate() {
        let tag = s.tag_at(i);
        if shares.iter().any(|o| o.tag == tag) {
            return Err(p9::Error::TagTwice(s.path.clone(), tag).into());
        }
        shares.push(Share::open(&s.path, &tag, s.read_only)?);
    }
    p9::fit_descriptor_limit(&mut shares);
    Ok(shares)
}

/// Share `index` as a virtio-9p device: its MMIO window, interrupt,
/// notification eventfd, DSDT node (the `dsdt_index`th virtio device) and
/// worker thread, confined as a share's.
fn plan_share(
    devices: &mut DeviceManager,
    index: usize,
    dsdt_index: usize,
    share: &Share,
) -> Result<(), Error> {
    const NAME: &str = "virtio-9p";
    let err = |e: String| Error::Virtio(format!("{NAME}{index}"), e);
    let (dev, worker) = p9::new(share).map_err(|e| err(e.to_string()))?;
    let (slot, notify) = plan_mmio_device(devices, NAME, index, Box::new(dev))?;
    devices.add_worker_of(
        &format!("{NAME}{index}"),
        seccomp::ThreadKind::P9Worker,
        move |mem, stop| worker.run(mem, notify, stop),
    );
    let dsdt_index = u8::try_from(dsdt_index).map_err(|_| err("too many virtio devices".into()))?;
    devices.add_dsdt(mmio::dsdt_node(dsdt_index, slot));
    log::info!(
        "share {}: {} as tag {}{}",
        index,
        share.root.display(),
        share.tag,
        if share.read_only { ", read-only" } else { "" }
    );
    Ok(())
}

/// A virtio device on its own virtio-mmio transport: its MMIO window and
/// interrupt, the transport on the MMIO bus, the QueueNotify ioeventfd and
/// guest memory once it exists. Returns the window (for the DSDT node) and
/// the notification eventfd (for the device's worker).
fn plan_mmio_device(
    devices: &mut DeviceManager,
    name: &'static str,
    index: usize,
    device: Box<dyn crate::devices::virtio::VirtioDevice>,
) -> Result<(crate::device_manager::MmioSlot, EventFd), Error> {
    let err = |e: String| Error::Virtio(format!("{name}{index}"), e);
    let (slot, irq) = devices.reserve_mmio(name)?;
    let notify = EventFd::new(EFD_NONBLOCK).map_err(|e| err(e.to_string()))?;
    let transport = MmioTransport::new(
        device,
        Interrupt::new(irq),
        vec![notify.try_clone().map_err(|e| err(e.to_string()))?],
    )
    .map_err(err)?;
    let transport = Arc::new(Mutex::new(transport));
    devices.insert_mmio(name, slot, transport.clone())?;
    devices.ioeventfd(name, &notify, slot.base + mmio::NOTIFY_OFFSET, 0)?;
    devices.on_memory(move |mem| {
        transport
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .set_memory(mem.clone())
    });
    Ok((slot, notify))
}

/// Disk `index` as a virtio-blk device: its MMIO window, interrupt,
/// notification eventfd, DSDT node and worker thread.
fn plan_disk(devices: &mut DeviceManager, index: usize, disk: Arc<Disk>) -> Result<(), Error> {
    const NAME: &str = "virtio-blk";
    let err = |e: String| Error::Virtio(format!("{NAME}{index}"), e);
    let (block, worker) = block::new(disk).map_err(|e| err(e.to_string()))?;
    let (slot, notify) = plan_mmio_device(devices, NAME, index, Box::new(block))?;
    devices.add_worker(&format!("{NAME}{index}"), move |mem, stop| {
        worker.run(mem, notify, stop)
    });
    let index = u8::try_from(index).map_err(|_| err("too many disks".into()))?;
    devices.add_dsdt(mmio::dsdt_node(index, slot));
    Ok(())
}

/// Kicks every vCPU thread out of KVM_RUN until it notices the stop, and
/// waits until each has left the guest (or ended). One kick each is
/// enough: the handler sets immediate_exit, so even a kick that arrives
/// before KVM_RUN is entered makes it return. All are kicked before the
/// first is waited for.
fn park(threads: &[VcpuThread]) {
    for t in threads {
        t.handle.kick();
    }
    for t in threads {
        // An error: the thread has ended, which is out of the guest too.
        let _ = t.parked.recv();
    }
}

/// Ends every vCPU thread and joins it: its start channel closes (a parked
/// thread returns), and a thread still running or paused is kicked and
/// sees its mailbox closed.
fn stop_threads(threads: Vec<VcpuThread>) {
    let joins: Vec<_> = threads
        .into_iter()
        .filter_map(|t| {
            drop(t.start);
            match Rc::try_unwrap(t.handle) {
                Ok(h) => Some(h.finish()),
                // Not reached: the gdb server holds weak references only.
                // The handle's drop then joins the thread.
                Err(h) => {
                    h.kick();
                    None
                }
            }
        })
        .collect();
    for j in joins {
        if j.join().is_err() {
            log::error!("a vCPU thread panicked");
        }
    }
}

fn pvh_entry(config: &VmConfig, kernel: &LoadedKernel) -> Result<u64, Error> {
    kernel.pvh_entry.ok_or_else(|| {
        let path = match &config.kernel {
            loader::KernelSource::File(p) => p.clone(),
            loader::KernelSource::Embedded => "(embedded tiny guest)".into(),
        };
        Error::Loader(loader::Error::NoPvhEntry(path))
    })
}

/// Writes the command line; returns its size including the NUL.
fn write_cmdline(mem: &GuestMemoryMmap, text: &str, kernel: &LoadedKernel) -> Result<u32, Error> {
    let cmdline = check_cmdline(text, kernel)?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline)
        .map_err(|e| Error::Cmdline(e.to_string()))?;
    Ok(text.len() as u32 + 1)
}

/// The command line's checks: printable ASCII, within the kernel's limit.
fn check_cmdline(text: &str, kernel: &LoadedKernel) -> Result<Cmdline, Error> {
    // A bzImage states its own limit (without the NUL).
    let capacity = kernel
        .setup_header
        .map(|h| h.cmdline_size as usize + 1)
        .filter(|&c| c > 1)
        .unwrap_or(CMDLINE_MAX_SIZE)
        .min(CMDLINE_MAX_SIZE);
    // The boot protocol's command line is printable ASCII.
    if let Some((at, c)) = text.char_indices().find(|(_, c)| !(' '..='~').contains(c)) {
        return Err(Error::Cmdline(format!(
            "byte {at} is {c:?}, a non-printable or non-ASCII character"
        )));
    }
    if text.len() + 1 > capacity {
        return Err(Error::Cmdline(format!(
            "{} bytes is over the kernel's limit of {} bytes",
            text.len(),
            capacity - 1
        )));
    }
    Cmdline::try_from(text, capacity).map_err(|e| Error::Cmdline(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::Format;

    fn elf_kernel() -> LoadedKernel {
        LoadedKernel {
            format: Format::Elf,
            entry64: HIMEM_START,
            pvh_entry: None,
            end: HIMEM_START + 0x1000,
            setup_header: None,
            multiboot: None,
        }
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn cmdline_is_written_nul_terminated() {
        use vm_memory::Bytes;
        let m = mem();
        assert_eq!(
            write_cmdline(&m, "console=ttyS0 x", &elf_kernel()).unwrap(),
            16
        );
        let mut buf = [0u8; 16];
        m.read_slice(&mut buf, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&buf, b"console=ttyS0 x\0");
    }

    #[test]
    fn cmdline_with_nul_or_control_bytes_is_rejected() {
        // argv cannot carry a NUL, but the library can be handed one.
        for bad in ["a\0b", "tab\there", "caf\u{e9}"] {
            let e = write_cmdline(&mem(), bad, &elf_kernel()).unwrap_err();
            assert!(e.to_string().starts_with("--cmdline: byte"), "{e}");
        }
    }

    #[test]
    fn cmdline_limit_follows_the_bzimage_header() {
        let mut k = elf_kernel();
        let mut hdr = setup_header_default();
        hdr.cmdline_size = 255;
        k.setup_header = Some(hdr);
        assert!(write_cmdline(&mem(), &"x".repeat(255), &k).is_ok());
        let e = write_cmdline(&mem(), &"x".repeat(256), &k).unwrap_err();
        assert!(e.to_string().contains("limit of 255 bytes"), "{e}");
        assert!(write_cmdline(&mem(), &"x".repeat(2047), &elf_kernel()).is_ok());
        assert!(write_cmdline(&mem(), &"x".repeat(2048), &elf_kernel()).is_err());
    }

    fn setup_header_default() -> linux_loader::loader::bootparam::setup_header {
        Default::default()
    }
}
