//! Fuzzes `vcpu::exit::handle` against the real port bus.
//!
//! The bus holds the same devices at the same ports as `Vmm::build` (both
//! UARTs writing into output queues, the i8042, debug-exit, the ACPI PM
//! block and the POST port, with --boot-trace on), next to an empty MMIO
//! bus. The input is a sequence of exits: port
//! reads and writes of any size (1/2/4 and malformed ones such as 0, 3 or
//! huge), string I/O, MMIO accesses of 1 to 8 bytes, serial input, and the
//! exits that carry no data. A small reference model runs next to the
//! devices and every operation is checked against it.
//!
//! Invariants checked (each is a documented contract or a property of every
//! 16550; none of them depends on how vm-superio happens to be written):
//!
//! 1. `handle` never panics, whatever the size and length.
//! 2. `handle` answers every port and MMIO exit with `Action::Continue`:
//!    devices end the VM through `VmControl`, never through the exit
//!    handler (exit.rs: "no knowledge of any device beyond the two buses").
//!    The data-less exits map as exit.rs documents them (HLT, failed entry,
//!    internal error and unknown exits crash; a triple fault crashes or
//!    resets as configured; system events 1/2/3 power off, reset, panic;
//!    other system events continue; a debug exit parks the vCPU with what
//!    KVM reported, `Action::DebugStop`).
//! 3. Port string I/O reaches the bus element by element, and a malformed
//!    size (0, or not dividing the buffer) is one access of the whole
//!    buffer (exit.rs `elements`). An access no device range holds entirely
//!    reads as all ones (bus.rs); so do the debug-exit port (debug_exit.rs)
//!    and the POST port (post.rs). Every MMIO read reads all ones (the MMIO
//!    bus is empty).
//! 4. `VmControl::reason()` is exactly the first of these, in order, and
//!    nothing else: a 1-, 2- or 4-byte write to 0xf4 whose low byte is B
//!    -> GuestExit(B); a 1-byte
//!    write of 0xFE to 0x64 -> Reset; a 1-byte write of 0xFE to the ACPI
//!    reset register (0x608) -> Reset; a write covering the high byte of
//!    PM1a_CNT (0x605) with SLP_EN set and SLP_TYP = S5 -> PowerOff.
//! 5. For each UART (16550 register semantics; a wide access touches
//!    consecutive registers, serial.rs):
//!    a. the scratch register (offset 7) is plain storage: after every
//!       operation a probe byte written there reads back unchanged,
//!       whatever DLAB and loopback say (DLAB only switches offsets 0/1);
//!    b. LCR (offset 3) reads back what was last written; the low five MCR
//!       bits (offset 4) and the low four IER bits (offset 1, DLAB clear)
//!       likewise; with DLAB set, offsets 0/1 read back the divisor latch
//!       last written through them;
//!    c. a THR write (offset 0, DLAB clear) outside loopback appears on the
//!       output, in order, and nothing else does; in loopback it lands in
//!       the receive FIFO instead (if there is room);
//!    d. the receive FIFO holds 64 bytes (serial.rs, DESIGN.md): `enqueue`
//!       takes min(room, offered) bytes outside loopback and none in
//!       loopback; RBR reads return queued bytes in order; LSR bit 0 (data
//!       ready) is set exactly when the FIFO holds data;
//!    e. a guest read that leaves the FIFO empty signals `rx_ready`, so the
//!       console loop never stalls waiting to feed more input.
//! 6. The boot trace (trace.rs, post.rs) records the first 64 one-byte POST
//!    writes to port 0x80, in order, and nothing more; "first serial byte"
//!    appears once if either UART produced output and never otherwise.

#![no_main]

use std::collections::VecDeque;
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use kvmini::arch::layout::*;
use kvmini::bus::Bus;
use kvmini::console::Wiring;
use kvmini::control::{StopReason, VmControl};
use kvmini::device_manager::DeviceManager;
use kvmini::devices::debug_exit::ExitRule;
use kvmini::trace::BootTrace;
use kvmini::vcpu::exit::{handle, kvm_debug_exit_arch, Action, Exit, TripleFault};
use kvmini::vmm::{plan_devices, Platform};

/// Longest string I/O buffer (KVM itself caps string I/O at a page).
const MAX_IO_BYTES: usize = 1024;
/// Most operations per input.
const MAX_OPS: usize = 256;
/// The UART's receive FIFO depth (serial.rs, DESIGN.md "Gotchas").
const FIFO_SIZE: usize = 64;

const LCR_DLAB: u8 = 0x80;
const MCR_LOOP: u8 = 0x10;
const ACPI_SLP_EN_HIGH: u8 = 0x20;
const ACPI_S5: u8 = 5;
const I8042_RESET: u8 = 0xfe;
/// POST codes the boot trace keeps (trace.rs MAX_POST_CODES).
const MAX_POST_CODES: usize = 64;

// ---------------------------------------------------------------- input

/// A port chosen near a device (so accesses straddle range edges) or raw.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum PortSel {
    Near(Dev, i8),
    Raw(u16),
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
enum Dev {
    Com1,
    Com2,
    I8042,
    DebugExit,
    Acpi,
    Post,
    FwCfg,
}

/// Element size of a port access: the three real ones, and malformed ones.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Size {
    One,
    Two,
    Four,
    Raw(u8),
    Huge,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// `count` elements of `size` bytes, or, with `raw_len`, a buffer whose
    /// length need not be a multiple of the size.
    PortIn {
        port: PortSel,
        size: Size,
        count: u8,
        raw_len: Option<u16>,
        fill: u8,
    },
    PortOut {
        port: PortSel,
        size: Size,
        data: Vec<u8>,
    },
    MmioRead {
        addr: u64,
        len: u8,
    },
    MmioWrite {
        addr: u64,
        data: Vec<u8>,
    },
    Enqueue {
        com2: bool,
        bytes: Vec<u8>,
    },
    Hlt,
    Shutdown,
    FailEntry(u64),
    InternalError(u32),
    SystemEvent(u32),
    /// KVM_EXIT_DEBUG at this pc (kicks never reach `handle`: the run loop
    /// takes them before, see vcpu/translate.rs).
    Debug(u64),
    Other,
}

#[derive(Arbitrary, Debug)]
struct Input {
    reboot_on_triple_fault: bool,
    probe: u8,
    ops: Vec<Op>,
}

// ---------------------------------------------------------------- machine

/// What the port map looks like: (device, base, length), as in Vmm::build.
fn ranges() -> [(Dev, u16, u16); 7] {
    [
        (Dev::Com1, COM1_PORT, UART_PORT_COUNT),
        (Dev::Com2, COM2_PORT, UART_PORT_COUNT),
        (Dev::I8042, I8042_PORT, I8042_PORT_COUNT),
        (Dev::DebugExit, DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_COUNT),
        (Dev::FwCfg, FW_CFG_PORT, FW_CFG_PORT_COUNT),
        (Dev::Acpi, PM1A_EVT_PORT, ACPI_PORT_COUNT),
        (Dev::Post, POST_PORT, 1),
    ]
}

fn base(dev: Dev) -> u16 {
    ranges().iter().find(|r| r.0 == dev).map(|r| r.1).unwrap()
}

/// The devices, planned by kvmini's own `vmm::plan_devices` (what
/// `Vmm::build` does, minus the VM: interrupt eventfds stay unconnected).
struct Machine {
    io: Arc<Bus>,
    mmio: Arc<Bus>,
    control: Arc<VmControl>,
    uarts: Vec<Wiring>,
    trace: Arc<BootTrace>,
    _devices: DeviceManager,
}

impl Machine {
    fn new() -> Self {
        let control = Arc::new(VmControl::new().unwrap());
        let trace = Arc::new(BootTrace::new(std::time::Instant::now()));
        let mut devices = DeviceManager::new();
        let platform = Platform {
            memory: 128 << 20,
            cpus: 1,
            debug_exit: ExitRule::Verbatim,
        };
        let uarts =
            plan_devices(&mut devices, 2, &platform, &control, &Some(trace.clone())).unwrap();
        let (io, mmio) = devices.buses();
        Self {
            io,
            mmio,
            control,
            uarts,
            trace,
            _devices: devices,
        }
    }
}

// ---------------------------------------------------------------- model

/// What a 16550 must look like from the guest's side.
#[derive(Debug)]
struct UartModel {
    lcr: u8,
    mcr: u8,
    scr: u8,
    /// None until the guest writes it (reset values are not a contract).
    ier: Option<u8>,
    dll: Option<u8>,
    dlm: Option<u8>,
    fifo: VecDeque<u8>,
    /// Expected output since the last drain.
    out: Vec<u8>,
    /// A guest read left the FIFO empty since the last check.
    drained: bool,
}

impl UartModel {
    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    fn write(&mut self, reg: u64, v: u8) {
        match reg {
            0 if self.dlab() => self.dll = Some(v),
            1 if self.dlab() => self.dlm = Some(v),
            0 if self.loopback() => {
                if self.fifo.len() < FIFO_SIZE {
                    self.fifo.push_back(v);
                }
            }
            0 => self.out.push(v),
            1 => self.ier = Some(v),
            3 => self.lcr = v,
            4 => self.mcr = v,
            7 => self.scr = v,
            _ => {}
        }
    }

    fn read(&mut self, reg: u64, got: u8, what: &str) {
        match reg {
            0 if self.dlab() => {
                if let Some(dll) = self.dll {
                    assert_eq!(got, dll, "{what}: DLL read back");
                }
            }
            1 if self.dlab() => {
                if let Some(dlm) = self.dlm {
                    assert_eq!(got, dlm, "{what}: DLM read back");
                }
            }
            0 => {
                if let Some(b) = self.fifo.pop_front() {
                    assert_eq!(got, b, "{what}: RBR returns input in order");
                }
                if self.fifo.is_empty() {
                    self.drained = true;
                }
            }
            1 => {
                if let Some(ier) = self.ier {
                    assert_eq!(got & 0x0f, ier & 0x0f, "{what}: IER read back");
                }
            }
            3 => assert_eq!(got, self.lcr, "{what}: LCR read back"),
            4 => assert_eq!(got & 0x1f, self.mcr & 0x1f, "{what}: MCR read back"),
            5 => assert_eq!(
                got & 1 != 0,
                !self.fifo.is_empty(),
                "{what}: LSR data-ready = FIFO not empty (FIFO {:?})",
                self.fifo
            ),
            7 => assert_eq!(got, self.scr, "{what}: scratch read back"),
            _ => {}
        }
    }
}

struct Model {
    uarts: [UartModel; 2],
    reason: Option<StopReason>,
    /// Every one-byte POST write, in order.
    post_codes: Vec<u8>,
    /// Some UART produced output.
    any_output: bool,
}

impl Model {
    fn new(m: &Machine) -> Self {
        let uart = |port: u16| {
            let read = |off: u16| {
                let mut b = [0u8];
                assert!(m.io.read(u64::from(port + off), &mut b));
                b[0]
            };
            UartModel {
                lcr: read(3),
                mcr: read(4),
                scr: read(7),
                ier: None,
                dll: None,
                dlm: None,
                fifo: VecDeque::new(),
                out: Vec::new(),
                drained: false,
            }
        };
        Self {
            uarts: [uart(COM1_PORT), uart(COM2_PORT)],
            reason: None,
            post_codes: Vec::new(),
            any_output: false,
        }
    }

    fn stop(&mut self, r: StopReason) {
        self.reason.get_or_insert(r);
    }

    /// The device range that holds all of `port..port+len`, as bus.rs
    /// resolves it.
    fn resolve(port: u16, len: usize) -> Option<(Dev, u64)> {
        let (port, len) = (u64::from(port), len as u64);
        ranges().into_iter().find_map(|(dev, b, n)| {
            let (b, n) = (u64::from(b), u64::from(n));
            (port >= b && port + len <= b + n).then(|| (dev, port - b))
        })
    }

    fn uart(&mut self, dev: Dev) -> Option<&mut UartModel> {
        match dev {
            Dev::Com1 => Some(&mut self.uarts[0]),
            Dev::Com2 => Some(&mut self.uarts[1]),
            _ => None,
        }
    }

    /// One element of a port write, as a device sees it.
    fn write(&mut self, port: u16, chunk: &[u8]) {
        let Some((dev, off)) = Self::resolve(port, chunk.len()) else {
            return;
        };
        if let Some(u) = self.uart(dev) {
            for (i, &b) in chunk.iter().enumerate() {
                u.write(off + i as u64, b);
            }
            return;
        }
        match (dev, off, chunk) {
            (Dev::DebugExit, 0, c) if matches!(c.len(), 1 | 2 | 4) => {
                self.stop(StopReason::GuestExit(c[0]))
            }
            (Dev::Post, 0, &[b]) => self.post_codes.push(b),
            (Dev::I8042, 4, &[I8042_RESET]) => self.stop(StopReason::Reset),
            (Dev::Acpi, 8, c) => {
                if c == [ACPI_RESET_VALUE] {
                    self.stop(StopReason::Reset);
                }
            }
            (Dev::Acpi, off, c) => {
                let cnt_high = (PM1A_CNT_PORT - PM1A_EVT_PORT) as u64 + 1;
                if let Some(&b) = cnt_high.checked_sub(off).and_then(|i| c.get(i as usize)) {
                    if b & ACPI_SLP_EN_HIGH != 0 && (b >> 2) & 7 == ACPI_S5 {
                        self.stop(StopReason::PowerOff);
                    }
                }
            }
            _ => {}
        }
    }

    /// One element of a port read: checks what the guest got.
    fn read(&mut self, port: u16, got: &[u8]) {
        let what = format!("in {port:#x} ({} bytes) -> {got:02x?}", got.len());
        match Self::resolve(port, got.len()) {
            None | Some((Dev::DebugExit | Dev::Post, _)) => {
                assert!(got.iter().all(|&b| b == 0xff), "{what}: expected all ones");
            }
            Some((dev, off)) => {
                if let Some(u) = self.uart(dev) {
                    for (i, &b) in got.iter().enumerate() {
                        u.read(off + i as u64, b, &what);
                    }
                }
            }
        }
    }
}

/// How exit.rs splits a port access into elements.
fn element_size(len: usize, size: usize) -> usize {
    if size == 0 || !len.is_multiple_of(size) {
        len.max(1)
    } else {
        size
    }
}

fn port_of(sel: PortSel) -> u16 {
    match sel {
        PortSel::Near(dev, delta) => base(dev).wrapping_add(delta as i16 as u16),
        PortSel::Raw(p) => p,
    }
}

fn size_of(s: Size) -> usize {
    match s {
        Size::One => 1,
        Size::Two => 2,
        Size::Four => 4,
        Size::Raw(n) => usize::from(n),
        Size::Huge => usize::MAX,
    }
}

// ---------------------------------------------------------------- driver

struct Harness {
    m: Machine,
    model: Model,
    tf: TripleFault,
}

impl Harness {
    fn handle(&self, exit: Exit) -> Action {
        handle(exit, &self.m.io, &self.m.mmio, self.tf)
    }

    fn port_out(&mut self, port: u16, size: usize, data: &[u8]) {
        let a = self.handle(Exit::IoOut { port, size, data });
        assert_eq!(a, Action::Continue, "out {port:#x}");
        for chunk in data.chunks(element_size(data.len(), size)) {
            self.model.write(port, chunk);
        }
    }

    fn port_in(&mut self, port: u16, size: usize, buf: &mut [u8]) {
        let a = self.handle(Exit::IoIn {
            port,
            size,
            data: buf,
        });
        assert_eq!(a, Action::Continue, "in {port:#x}");
        for chunk in buf.chunks(element_size(buf.len(), size)) {
            self.model.read(port, chunk);
        }
    }

    fn op(&mut self, op: Op) {
        let expect = |a: Action, want: Option<StopReason>, what: &str| match want {
            None => assert_eq!(a, Action::Continue, "{what}"),
            Some(StopReason::Crash(_)) => {
                assert!(
                    matches!(a, Action::Stop(StopReason::Crash(_))),
                    "{what}: {a:?}"
                )
            }
            Some(r) => assert_eq!(a, Action::Stop(r), "{what}"),
        };
        let crash = || Some(StopReason::Crash(String::new()));
        match op {
            Op::PortIn {
                port,
                size,
                count,
                raw_len,
                fill,
            } => {
                let size = size_of(size);
                let len = match raw_len {
                    Some(n) => usize::from(n) % (MAX_IO_BYTES + 1),
                    None => size.saturating_mul(usize::from(count)).min(MAX_IO_BYTES),
                };
                let mut buf = vec![fill; len];
                self.port_in(port_of(port), size, &mut buf);
            }
            Op::PortOut { port, size, data } => {
                let data = &data[..data.len().min(MAX_IO_BYTES)];
                self.port_out(port_of(port), size_of(size), data);
            }
            Op::MmioRead { addr, len } => {
                let mut buf = vec![0u8; usize::from(len % 8) + 1];
                let a = self.handle(Exit::MmioRead {
                    addr,
                    data: &mut buf,
                });
                assert_eq!(a, Action::Continue);
                assert!(buf.iter().all(|&b| b == 0xff), "MMIO {addr:#x}: {buf:02x?}");
            }
            Op::MmioWrite { addr, data } => {
                // 1 to 8 bytes, as an MMIO access is.
                let data = if data.is_empty() { vec![0] } else { data };
                let data = &data[..data.len().min(8)];
                let a = self.handle(Exit::MmioWrite { addr, data });
                assert_eq!(a, Action::Continue);
            }
            Op::Enqueue { com2, bytes } => {
                let (u, um) = (
                    &self.m.uarts[usize::from(com2)],
                    &mut self.model.uarts[usize::from(com2)],
                );
                let dev = &mut *u.device.lock().unwrap();
                assert_eq!(dev.fifo_room(), FIFO_SIZE - um.fifo.len(), "fifo_room");
                let want = if um.loopback() {
                    0
                } else {
                    bytes.len().min(FIFO_SIZE - um.fifo.len())
                };
                let took = dev.enqueue(&bytes);
                assert_eq!(took, want, "enqueue of {} bytes", bytes.len());
                um.fifo.extend(&bytes[..took]);
            }
            Op::Hlt => expect(self.handle(Exit::Hlt), crash(), "HLT"),
            Op::Shutdown => {
                let want = match self.tf {
                    TripleFault::Reset => Some(StopReason::Reset),
                    TripleFault::Crash => crash(),
                };
                expect(self.handle(Exit::Shutdown), want, "triple fault")
            }
            Op::FailEntry(r) => expect(self.handle(Exit::FailEntry(r)), crash(), "fail entry"),
            Op::InternalError(s) => expect(
                self.handle(Exit::InternalError(s)),
                crash(),
                "internal error",
            ),
            Op::SystemEvent(t) => {
                let want = match t {
                    1 => Some(StopReason::PowerOff),
                    2 => Some(StopReason::Reset),
                    3 => Some(StopReason::Panic),
                    _ => None,
                };
                expect(self.handle(Exit::SystemEvent(t)), want, "system event")
            }
            Op::Debug(pc) => {
                let arch = kvm_debug_exit_arch {
                    exception: 1,
                    pc,
                    ..Default::default()
                };
                assert_eq!(
                    self.handle(Exit::Debug(arch)),
                    Action::DebugStop(arch),
                    "debug exit"
                );
            }
            Op::Other => expect(
                self.handle(Exit::Other("KVM_EXIT_FUZZ")),
                crash(),
                "other exit",
            ),
        }
    }

    /// The boot trace, once all operations are done.
    fn check_trace(&self) {
        let text = self.m.trace.render();
        let posts: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim_start().split_once("  ").map(|(_, what)| what))
            .filter(|what| what.starts_with("POST code"))
            .collect();
        let want: Vec<String> = self
            .model
            .post_codes
            .iter()
            .take(MAX_POST_CODES)
            .map(|c| format!("POST code {c:#04x}"))
            .collect();
        assert_eq!(posts, want, "boot trace POST codes:\n{text}");
        assert_eq!(
            text.matches("first serial byte").count(),
            usize::from(self.model.any_output),
            "boot trace:\n{text}"
        );
    }

    /// The checks that follow every operation.
    fn check(&mut self, probe: u8) {
        assert_eq!(
            self.m.control.reason(),
            self.model.reason,
            "stop reason (first documented trigger wins)"
        );
        let mut out = Vec::new();
        for (i, port) in [COM1_PORT, COM2_PORT].into_iter().enumerate() {
            // Output: exactly the THR bytes written outside loopback.
            self.m.uarts[i].queue.drain(&mut out);
            let want = std::mem::take(&mut self.model.uarts[i].out);
            assert_eq!(out, want, "UART {port:#x} output");
            self.model.any_output |= !want.is_empty();
            // Input: a guest read that emptied the FIFO woke the console.
            let woke = self.m.uarts[i].rx_ready.read().is_ok_and(|n| n > 0);
            if std::mem::take(&mut self.model.uarts[i].drained) {
                assert!(woke, "UART {port:#x}: FIFO drained without rx_ready");
            }
            // Scratch round trip through the bus, DLAB or not.
            let p = if probe == self.model.uarts[i].scr {
                !probe
            } else {
                probe
            };
            self.port_out(port + 7, 1, &[p]);
            let mut b = [0u8];
            self.port_in(port + 7, 1, &mut b);
            assert_eq!(b[0], p, "UART {port:#x}: scratch round trip");
            // LCR is plain storage too (and the probe above must not touch it).
            self.port_in(port + 3, 1, &mut b);
        }
    }
}

fuzz_target!(|input: Input| {
    let m = Machine::new();
    let model = Model::new(&m);
    let tf = if input.reboot_on_triple_fault {
        TripleFault::Reset
    } else {
        TripleFault::Crash
    };
    let mut h = Harness { m, model, tf };
    for (i, op) in input.ops.into_iter().take(MAX_OPS).enumerate() {
        h.op(op);
        h.check(input.probe.wrapping_add(i as u8));
    }
    h.check_trace();
});
