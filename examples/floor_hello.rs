//! The floor for the `hello` job: the least a process must do to run
//! kvmini's tiny guest in `hello` mode to its end.
//!
//! examples/floor.rs measures what KVM needs to run *any* guest code (two
//! real-mode instructions to the first exit). On a KVM that emulates every
//! guest instruction, as on the machines this project is measured on, the
//! tiny guest's own work (a few hundred instructions and an exit for every
//! byte of its banner) is a large part of kvmini's lifecycle. This program
//! runs that same work with nothing else: one thread, no command-line
//! parser, no console, no seccomp, no devices beyond answering the UART's
//! line status and collecting the transmitted bytes. It uses kvmini's own
//! boot helpers (memory, ELF loading, page tables, GDT, zero page), so the
//! guest starts exactly as under kvmini. scripts/bench times it beside
//! kvmini: the difference is what kvmini itself costs for this job.
//!
//! `--first-exit` stops at the guest's first exit instead: the same VM,
//! memory, guest and boot, run until the guest first needs the VMM (its
//! first banner byte, `k`, written to COM1). That is the floor
//! program taken literally for this guest: create a VM and one vCPU, map
//! memory, run to the guest's first exit. It is the floor the bench holds
//! kvmini's lifecycle against; examples/floor.rs (two real-mode
//! instructions, no guest to load) is the bare floor beside it.
//!
//! Prints the guest's banner on stdout (with `--first-exit`, the one byte
//! of that first exit). Exit status: the byte the guest wrote to the
//! debug-exit port (0 for hello; 0 at the first exit with `--first-exit`),
//! 1 for anything unexpected (with a line on stderr), 2 for a bad argument.

use std::io::Write;
use std::process::ExitCode;

use kvm_ioctls::{Kvm, VcpuExit};
use kvmini::arch::x86_64::{boot_params, paging, regs};
use kvmini::loader::{self, KernelSource};
use kvmini::memory;
use kvmini::vm::Vm;
use linux_loader::cmdline::Cmdline;
use vm_memory::GuestAddress;

const COM1: u16 = 0x3f8;
const COM1_LSR: u16 = COM1 + 5;
const DEBUG_EXIT: u16 = 0xf4;
/// The guest's command line.
const CMDLINE: &str = "hello";
const MEMORY: u64 = 128 << 20;
/// LSR: transmitter empty and holding register empty.
const LSR_IDLE: u8 = 0x60;

fn run(out: &mut Vec<u8>, first_exit: bool) -> Result<u8, String> {
    let kvm = Kvm::new().map_err(|e| format!("open /dev/kvm: {e}"))?;
    let mem = memory::create(MEMORY).map_err(|e| format!("guest memory: {e}"))?;
    let kernel = loader::load_kernel(&mem, &KernelSource::Embedded)
        .map_err(|e| format!("load the tiny guest: {e}"))?;
    let cmdline = Cmdline::try_from(CMDLINE, CMDLINE.len() + 1).map_err(|e| e.to_string())?;
    let cmdline_at = GuestAddress(kvmini::arch::x86_64::layout::CMDLINE_START);
    linux_loader::loader::load_cmdline(&mem, cmdline_at, &cmdline).map_err(|e| e.to_string())?;
    let cr3 = paging::setup(&mem).map_err(|e| format!("page tables: {e}"))?;
    regs::write_gdt(&mem).map_err(|e| format!("GDT: {e}"))?;
    let e820 = memory::e820_map(MEMORY);
    let params = boot_params::linux_boot_params(&boot_params::LinuxBoot {
        header: kernel.setup_header,
        e820: &e820,
        cmdline_size: CMDLINE.len() as u32 + 1,
        initramfs: None,
        rsdp: None,
    })
    .map_err(|e| e.to_string())?;
    boot_params::write_linux(&mem, &params).map_err(|e| e.to_string())?;

    let vm = Vm::new(&kvm, &mem, false).map_err(|e| format!("VM: {e}"))?;
    let vcpu = vm
        .fd()
        .create_vcpu(0)
        .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    let cpuid =
        kvmini::vcpu::supported_cpuid(&kvm).map_err(|e| format!("KVM_GET_SUPPORTED_CPUID: {e}"))?;
    vcpu.set_cpuid2(&cpuid)
        .map_err(|e| format!("KVM_SET_CPUID2: {e}"))?;
    let entry = regs::Entry::Linux64(kernel.entry64);
    let sregs = vcpu.get_sregs().map_err(|e| format!("get sregs: {e}"))?;
    vcpu.set_sregs(&regs::sregs(sregs, entry, cr3))
        .map_err(|e| format!("set sregs: {e}"))?;
    vcpu.set_regs(&regs::regs(entry))
        .map_err(|e| format!("set regs: {e}"))?;

    let mut vcpu = vcpu;
    if first_exit {
        // The guest's first exit must be its first banner byte: anything
        // else means it did not boot the way kvmini boots it.
        return match vcpu.run().map_err(|e| format!("KVM_RUN: {e}"))? {
            VcpuExit::IoOut(COM1, data @ [b'k']) => {
                out.extend_from_slice(data);
                Ok(0)
            }
            other => Err(format!("unexpected first exit: {other:?}")),
        };
    }
    loop {
        match vcpu.run().map_err(|e| format!("KVM_RUN: {e}"))? {
            VcpuExit::IoOut(COM1, data) => out.extend_from_slice(data),
            VcpuExit::IoOut(DEBUG_EXIT, data) => return Ok(data.first().copied().unwrap_or(0)),
            VcpuExit::IoIn(COM1_LSR, data) => data.fill(LSR_IDLE),
            VcpuExit::IoIn(_, data) => data.fill(0xff),
            VcpuExit::IoOut(..) => {}
            other => return Err(format!("unexpected exit: {other:?}")),
        }
    }
}

fn main() -> ExitCode {
    let mut first_exit = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--first-exit" => first_exit = true,
            _ => {
                eprintln!("usage: floor_hello [--first-exit]");
                return ExitCode::from(2);
            }
        }
    }
    let mut out = Vec::with_capacity(256);
    let result = run(&mut out, first_exit);
    // The banner leaves in one write, as kvmini's console batches it.
    let _ = std::io::stdout().write_all(&out);
    match result {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("floor_hello: {e}");
            ExitCode::FAILURE
        }
    }
}
