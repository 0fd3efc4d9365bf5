//! `--gdb`: a gdb remote stub, served by the main thread's event loop
//! (gdbstub's state machine over a non-blocking socket) on top of the vCPU
//! handles (pause, resume, state, guest debug, address translation).
//!
//! Guarantees:
//! - All-stop: before gdb hears of a stop (a breakpoint, a finished step,
//!   a watchpoint, Ctrl-C, a new connection), every vCPU is parked out of
//!   KVM_RUN; a resume lets all of them (those gdb lets go) run together.
//!   Each vCPU is a gdb thread, vCPU N being thread N+1.
//! - Nothing gdb sends blocks the main thread: the socket is non-blocking,
//!   replies are buffered (bounded: a peer that stops reading is dropped)
//!   and every vCPU command is bounded by the handle's timeout.
//! - Memory is addressed by guest virtual address, translated page by page
//!   through the vCPU's page tables (KVM_TRANSLATE); an unmapped address or
//!   one outside guest RAM is an error reply, never a crash.
//! - A software breakpoint is an int3 that kvmini writes into guest memory
//!   (KVM_GUESTDBG_USE_SW_BP makes it exit to kvmini); an int3 that is the
//!   guest's own is handed back to the guest (KVM_GUESTDBG_INJECT_BP).
//!   Memory reads show the bytes under kvmini's int3s, not the int3s.
//! - A connection that drops (or gdb's `detach`) removes every breakpoint
//!   and lets the guest run on; a new gdb can attach. gdb's `kill` ends the
//!   VM with [`StopReason::GdbKill`].

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use gdbstub::arch::{Arch, Registers};
use gdbstub::common::{Signal, Tid};
use gdbstub::conn::Connection;
use gdbstub::stub::state_machine::GdbStubStateMachine;
use gdbstub::stub::{DisconnectReason, GdbStub, MultiThreadStopReason};
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps,
    SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use kvm_bindings::{
    kvm_guest_debug, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_INJECT_BP, KVM_GUESTDBG_SINGLESTEP,
    KVM_GUESTDBG_USE_HW_BP, KVM_GUESTDBG_USE_SW_BP,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::control::{StopReason, VmControl};
use crate::event_loop::{Interest, Subscriber};
use crate::vcpu::handle::{pause_all, DebugStop, VcpuHandle, EMULATION_FAILURE};

/// Where `--gdb` listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GdbAddr {
    /// A Unix socket at this path.
    Unix(PathBuf),
    /// A TCP address, `HOST:PORT` (HOST defaults to 127.0.0.1).
    Tcp(String),
}

/// `--gdb ADDR[,nowait]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GdbConfig {
    pub addr: GdbAddr,
    /// Hold the guest before its first instruction until gdb attaches.
    pub wait: bool,
}

/// Parses `--gdb`'s value: a Unix socket path or `tcp:[HOST]:PORT`, then
/// optionally `,nowait`.
pub fn parse(s: &str) -> Result<GdbConfig, String> {
    let (addr, wait) = match s.strip_suffix(",nowait") {
        Some(a) => (a, false),
        None => (s, true),
    };
    if addr.is_empty() {
        return Err("expected a Unix socket path or tcp:[HOST]:PORT".into());
    }
    let addr = match addr.strip_prefix("tcp:") {
        Some(hp) => {
            let (host, port) = hp
                .rsplit_once(':')
                .ok_or_else(|| format!("{addr:?}: expected tcp:[HOST]:PORT"))?;
            port.parse::<u16>()
                .map_err(|_| format!("{addr:?}: {port:?} is not a TCP port (0-65535)"))?;
            let host = match host {
                "" => "127.0.0.1",
                h => h,
            };
            GdbAddr::Tcp(format!("{host}:{port}"))
        }
        None => GdbAddr::Unix(PathBuf::from(addr)),
    };
    Ok(GdbConfig { addr, wait })
}

/// Errors setting `--gdb` up (bad input: status 2).
#[derive(Debug, thiserror::Error)]
#[error("--gdb {what}: cannot listen: {source}")]
pub struct Error {
    what: String,
    #[source]
    source: io::Error,
}

enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Listener {
    fn fd(&self) -> RawFd {
        match self {
            Listener::Unix(l, _) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }

    fn accept(&self) -> io::Result<Stream> {
        Ok(match self {
            Listener::Unix(l, _) => Stream::Unix(l.accept()?.0),
            // TCP_NODELAY comes from the listener (see listen).
            Listener::Tcp(l) => Stream::Tcp(l.accept()?.0),
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Opens `--gdb`'s listener, before anything else runs (bad input is found
/// before /dev/kvm is opened). Prints where it listens: with port 0 the
/// port the system chose is the one to give gdb.
pub fn listen(config: &GdbConfig) -> Result<GdbListener, Error> {
    let (listener, shown) = match &config.addr {
        GdbAddr::Unix(path) => {
            let err = |source| Error {
                what: path.display().to_string(),
                source,
            };
            let l = crate::console::backend::listen_unix(path).map_err(err)?;
            (Listener::Unix(l, path.clone()), path.display().to_string())
        }
        GdbAddr::Tcp(hp) => {
            let err = |source| Error {
                what: format!("tcp:{hp}"),
                source,
            };
            let addr = hp
                .to_socket_addrs()
                .map_err(err)?
                .next()
                .ok_or_else(|| err(io::Error::other("the host has no address")))?;
            let l = TcpListener::bind(addr).map_err(err)?;
            l.set_nonblocking(true).map_err(err)?;
            // gdb's packets are small and answered one by one: no Nagle
            // delay. Set here, before the main thread's seccomp filter
            // (which has no setsockopt); Linux copies it to every
            // accepted socket.
            let one: libc::c_int = 1;
            // SAFETY: a valid option value of its size for a TCP socket.
            unsafe {
                libc::setsockopt(
                    l.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            let shown = match l.local_addr() {
                Ok(a) => format!("tcp:{a}"),
                Err(_) => format!("tcp:{hp}"),
            };
            (Listener::Tcp(l), shown)
        }
    };
    if config.wait {
        eprintln!(
            "kvmini: --gdb is listening on {shown}; the guest starts when gdb attaches \
             (target remote {})",
            shown.strip_prefix("tcp:").unwrap_or(&shown)
        );
    } else {
        eprintln!("kvmini: --gdb is listening on {shown}");
    }
    Ok(GdbListener {
        listener,
        wait: config.wait,
    })
}

/// `--gdb`'s bound listener, until the VM exists.
pub struct GdbListener {
    listener: Listener,
    wait: bool,
}

impl GdbListener {
    /// Whether the vCPUs are held until gdb attaches.
    pub fn holds(&self) -> bool {
        self.wait
    }
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }

    /// With fcntl, which the main thread's seccomp filter allows (std's
    /// set_nonblocking is an ioctl).
    fn set_nonblocking(&self) -> io::Result<()> {
        let fd = self.fd();
        // SAFETY: fcntl on a descriptor this stream owns.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => Write::write(s, buf),
            Stream::Tcp(s) => Write::write(s, buf),
        }
    }
}

/// Most reply bytes kept for a gdb that does not read them: far more than
/// any reply (gdbstub's packets are a few KiB), so only a peer that has
/// stopped reading reaches it, and is dropped.
const MAX_UNSENT: usize = 1 << 20;

/// gdbstub's connection: replies are buffered and written as the socket
/// takes them, never waited for.
pub struct Conn {
    stream: Stream,
    out: Vec<u8>,
}

impl Conn {
    /// Writes what the socket takes now.
    fn drain(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Waits up to `limit` for the buffered replies to go out (the last
    /// words to a gdb when the VM ends).
    fn drain_for(&mut self, limit: std::time::Duration) {
        let end = std::time::Instant::now() + limit;
        while !self.out.is_empty() && self.drain().is_ok() {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            let mut p = libc::pollfd {
                fd: self.stream.fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut p, 1, left.as_millis().min(1000) as i32) };
        }
    }
}

impl Connection for Conn {
    type Error = io::Error;

    fn write(&mut self, byte: u8) -> io::Result<()> {
        self.write_all(&[byte])
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.out.len() + buf.len() > MAX_UNSENT {
            return Err(io::Error::other("gdb does not read its replies"));
        }
        self.out.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.drain()
    }
}

/// The registers gdb sees: gdbstub_arch's x86-64 core and SSE registers,
/// then FS/GS base and the control registers (see [`TARGET_XML`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Regs {
    pub core: X86_64CoreRegs,
    pub fs_base: u64,
    pub gs_base: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
}

/// Bytes of [`X86_64CoreRegs`] in a `g` packet.
const CORE_BYTES: usize = 0x218;
const EXTRA: usize = 8;

impl Regs {
    fn extra(&self) -> [u64; EXTRA] {
        [
            self.fs_base,
            self.gs_base,
            self.cr0,
            self.cr2,
            self.cr3,
            self.cr4,
            self.cr8,
            self.efer,
        ]
    }
}

impl Registers for Regs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.core.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        self.core.gdb_serialize(&mut write_byte);
        for r in self.extra() {
            for b in r.to_le_bytes() {
                write_byte(Some(b));
            }
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        if bytes.len() < CORE_BYTES + 8 * EXTRA {
            return Err(());
        }
        self.core.gdb_deserialize(&bytes[..CORE_BYTES])?;
        let mut words = bytes[CORE_BYTES..]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()));
        let mut next = || words.next().unwrap_or_default();
        self.fs_base = next();
        self.gs_base = next();
        self.cr0 = next();
        self.cr2 = next();
        self.cr3 = next();
        self.cr4 = next();
        self.cr8 = next();
        self.efer = next();
        Ok(())
    }
}

/// kvmini's x86-64 for gdbstub: the target description names every
/// register of a `g` packet, in [`Regs`]' order.
pub enum X86_64Kvm {}

impl Arch for X86_64Kvm {
    type Usize = u64;
    type Registers = Regs;
    type RegId = gdbstub_arch::x86::reg::id::X86_64CoreRegId;
    type BreakpointKind = usize;

    fn target_description_xml() -> Option<&'static str> {
        Some(TARGET_XML)
    }
}

/// The target description: gdb's i386 core, SSE and segment-base features
/// (their register names are what gdb's amd64 support looks for), and the
/// control registers in a feature of kvmini's own.
const TARGET_XML: &str = concat!(
    r#"<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd">"#,
    r#"<target version="1.0"><architecture>i386:x86-64</architecture>"#,
    r#"<feature name="org.gnu.gdb.i386.core">"#,
    r#"<flags id="i386_eflags" size="4">"#,
    r#"<field name="CF" start="0" end="0"/><field name="" start="1" end="1"/>"#,
    r#"<field name="PF" start="2" end="2"/><field name="AF" start="4" end="4"/>"#,
    r#"<field name="ZF" start="6" end="6"/><field name="SF" start="7" end="7"/>"#,
    r#"<field name="TF" start="8" end="8"/><field name="IF" start="9" end="9"/>"#,
    r#"<field name="DF" start="10" end="10"/><field name="OF" start="11" end="11"/>"#,
    r#"<field name="NT" start="14" end="14"/><field name="RF" start="16" end="16"/>"#,
    r#"<field name="VM" start="17" end="17"/><field name="AC" start="18" end="18"/>"#,
    r#"<field name="VIF" start="19" end="19"/><field name="VIP" start="20" end="20"/>"#,
    r#"<field name="ID" start="21" end="21"/></flags>"#,
    r#"<reg name="rax" bitsize="64" type="int64"/><reg name="rbx" bitsize="64" type="int64"/>"#,
    r#"<reg name="rcx" bitsize="64" type="int64"/><reg name="rdx" bitsize="64" type="int64"/>"#,
    r#"<reg name="rsi" bitsize="64" type="int64"/><reg name="rdi" bitsize="64" type="int64"/>"#,
    r#"<reg name="rbp" bitsize="64" type="data_ptr"/>"#,
    r#"<reg name="rsp" bitsize="64" type="data_ptr"/>"#,
    r#"<reg name="r8" bitsize="64" type="int64"/><reg name="r9" bitsize="64" type="int64"/>"#,
    r#"<reg name="r10" bitsize="64" type="int64"/><reg name="r11" bitsize="64" type="int64"/>"#,
    r#"<reg name="r12" bitsize="64" type="int64"/><reg name="r13" bitsize="64" type="int64"/>"#,
    r#"<reg name="r14" bitsize="64" type="int64"/><reg name="r15" bitsize="64" type="int64"/>"#,
    r#"<reg name="rip" bitsize="64" type="code_ptr"/>"#,
    r#"<reg name="eflags" bitsize="32" type="i386_eflags"/>"#,
    r#"<reg name="cs" bitsize="32" type="int32"/><reg name="ss" bitsize="32" type="int32"/>"#,
    r#"<reg name="ds" bitsize="32" type="int32"/><reg name="es" bitsize="32" type="int32"/>"#,
    r#"<reg name="fs" bitsize="32" type="int32"/><reg name="gs" bitsize="32" type="int32"/>"#,
    r#"<reg name="st0" bitsize="80" type="i387_ext"/><reg name="st1" bitsize="80" type="i387_ext"/>"#,
    r#"<reg name="st2" bitsize="80" type="i387_ext"/><reg name="st3" bitsize="80" type="i387_ext"/>"#,
    r#"<reg name="st4" bitsize="80" type="i387_ext"/><reg name="st5" bitsize="80" type="i387_ext"/>"#,
    r#"<reg name="st6" bitsize="80" type="i387_ext"/><reg name="st7" bitsize="80" type="i387_ext"/>"#,
    r#"<reg name="fctrl" bitsize="32" type="int" group="float"/>"#,
    r#"<reg name="fstat" bitsize="32" type="int" group="float"/>"#,
    r#"<reg name="ftag" bitsize="32" type="int" group="float"/>"#,
    r#"<reg name="fiseg" bitsize="32" type="int" group="float"/>"#,
    r#"<reg name="fioff" bitsize="32" type="int" group="float"/>"#,
    r#"<reg name="foseg" bitsize="32" type="int" group="float"/>"#,
    r#"<reg name="fooff" bitsize="32" type="int" group="float"/>"#,
    r#"<reg name="fop" bitsize="32" type="int" group="float"/>"#,
    r#"</feature><feature name="org.gnu.gdb.i386.sse">"#,
    r#"<vector id="v4f" type="ieee_single" count="4"/>"#,
    r#"<vector id="v2d" type="ieee_double" count="2"/>"#,
    r#"<vector id="v16i8" type="int8" count="16"/><vector id="v8i16" type="int16" count="8"/>"#,
    r#"<vector id="v4i32" type="int32" count="4"/><vector id="v2i64" type="int64" count="2"/>"#,
    r#"<union id="vec128"><field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/>"#,
    r#"<field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/>"#,
    r#"<field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>"#,
    r#"<field name="uint128" type="uint128"/></union>"#,
    r#"<flags id="i386_mxcsr" size="4">"#,
    r#"<field name="IE" start="0" end="0"/><field name="DE" start="1" end="1"/>"#,
    r#"<field name="ZE" start="2" end="2"/><field name="OE" start="3" end="3"/>"#,
    r#"<field name="UE" start="4" end="4"/><field name="PE" start="5" end="5"/>"#,
    r#"<field name="DAZ" start="6" end="6"/><field name="IM" start="7" end="7"/>"#,
    r#"<field name="DM" start="8" end="8"/><field name="ZM" start="9" end="9"/>"#,
    r#"<field name="OM" start="10" end="10"/><field name="UM" start="11" end="11"/>"#,
    r#"<field name="PM" start="12" end="12"/><field name="FZ" start="15" end="15"/></flags>"#,
    r#"<reg name="xmm0" bitsize="128" type="vec128"/><reg name="xmm1" bitsize="128" type="vec128"/>"#,
    r#"<reg name="xmm2" bitsize="128" type="vec128"/><reg name="xmm3" bitsize="128" type="vec128"/>"#,
    r#"<reg name="xmm4" bitsize="128" type="vec128"/><reg name="xmm5" bitsize="128" type="vec128"/>"#,
    r#"<reg name="xmm6" bitsize="128" type="vec128"/><reg name="xmm7" bitsize="128" type="vec128"/>"#,
    r#"<reg name="xmm8" bitsize="128" type="vec128"/><reg name="xmm9" bitsize="128" type="vec128"/>"#,
    r#"<reg name="xmm10" bitsize="128" type="vec128"/><reg name="xmm11" bitsize="128" type="vec128"/>"#,
    r#"<reg name="xmm12" bitsize="128" type="vec128"/><reg name="xmm13" bitsize="128" type="vec128"/>"#,
    r#"<reg name="xmm14" bitsize="128" type="vec128"/><reg name="xmm15" bitsize="128" type="vec128"/>"#,
    r#"<reg name="mxcsr" bitsize="32" type="i386_mxcsr" group="vector"/>"#,
    r#"</feature><feature name="org.gnu.gdb.i386.segments">"#,
    r#"<reg name="fs_base" bitsize="64" type="int"/><reg name="gs_base" bitsize="64" type="int"/>"#,
    r#"</feature><feature name="org.kvmini.x86.control">"#,
    r#"<reg name="cr0" bitsize="64" type="int" group="system"/>"#,
    r#"<reg name="cr2" bitsize="64" type="data_ptr" group="system"/>"#,
    r#"<reg name="cr3" bitsize="64" type="int" group="system"/>"#,
    r#"<reg name="cr4" bitsize="64" type="int" group="system"/>"#,
    r#"<reg name="cr8" bitsize="64" type="int" group="system"/>"#,
    r#"<reg name="efer" bitsize="64" type="int" group="system"/>"#,
    r#"</feature></target>"#
);

/// What gdb asked one vCPU to do at the next resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Stay,
    Continue,
    Step,
}

/// A hardware breakpoint or watchpoint in a debug register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HwSlot {
    addr: u64,
    /// None: an instruction breakpoint.
    watch: Option<WatchKind>,
    len: u64,
}

/// A software breakpoint: where kvmini's int3 is and what it covers.
#[derive(Debug, Clone, Copy)]
struct SwBp {
    gpa: u64,
    orig: u8,
}

const INT3: u8 = 0xcc;
const PAGE: u64 = 4096;
/// DR6's "which breakpoint" bits and its single-step bit.
const DR6_HIT: u64 = 0xf;
const DR6_BS: u64 = 1 << 14;
/// The exceptions a debug exit reports.
const DB_VECTOR: u32 = 1;
const BP_VECTOR: u32 = 3;

/// The guest as gdb sees it.
pub struct GdbTarget {
    vcpus: Vec<Weak<VcpuHandle>>,
    mem: GuestMemoryMmap,
    sw: BTreeMap<u64, SwBp>,
    hw: [Option<HwSlot>; 4],
    actions: Vec<Action>,
    /// Scheduler locking: vCPUs gdb did not name stay stopped.
    locked: bool,
    /// Which vCPUs were let go single-stepping at the last resume.
    stepping: Vec<bool>,
    /// vCPUs whose guest int3 is to be handed back when they next run.
    reinject: Vec<bool>,
    /// Whether the vCPUs run (between a resume and the next stop).
    running: bool,
    /// This host's KVM is PVM (the kvm_pvm module), whose instruction
    /// emulator fires no data breakpoints.
    no_data_breakpoints: bool,
}

fn tid_of(index: usize) -> Tid {
    NonZeroUsize::new(index + 1).unwrap_or(NonZeroUsize::MIN)
}

impl GdbTarget {
    fn new(mem: GuestMemoryMmap) -> Self {
        Self {
            vcpus: Vec::new(),
            mem,
            sw: BTreeMap::new(),
            hw: [None; 4],
            actions: Vec::new(),
            locked: false,
            stepping: Vec::new(),
            reinject: Vec::new(),
            running: true,
            no_data_breakpoints: std::path::Path::new("/sys/module/kvm_pvm").exists(),
        }
    }

    fn handles(&self) -> Vec<Rc<VcpuHandle>> {
        self.vcpus.iter().filter_map(Weak::upgrade).collect()
    }

    fn handle(&self, tid: Tid) -> TargetResult<Rc<VcpuHandle>, Self> {
        self.vcpus
            .get(tid.get() - 1)
            .and_then(Weak::upgrade)
            .ok_or(TargetError::Errno(libc::ESRCH as u8))
    }

    /// Pauses every vCPU (all-stop); the answers of those that have ended
    /// do not matter.
    fn stop_all(&mut self) {
        if let Err(e) = pause_all(&self.handles()) {
            log::warn!("gdb: pausing the vCPUs: {e}");
        }
        self.running = false;
    }

    /// The guest debug settings of a vCPU that runs on, stepping or not.
    fn debug_for(&self, step: bool, inject: bool) -> kvm_guest_debug {
        let mut d = kvm_guest_debug::default();
        if !self.sw.is_empty() {
            d.control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP;
        }
        let mut dr7 = 0u64;
        for (i, slot) in self.hw.iter().enumerate() {
            let Some(s) = slot else { continue };
            d.arch.debugreg[i] = s.addr;
            let rw = match s.watch {
                None => 0b00,
                Some(WatchKind::Write) => 0b01,
                Some(WatchKind::Read | WatchKind::ReadWrite) => 0b11,
            };
            let len = match s.len {
                2 => 0b01,
                4 => 0b11,
                8 => 0b10,
                _ => 0b00,
            };
            // Gi (global enable), R/Wi and LENi.
            dr7 |= (0b10 << (2 * i)) | (rw << (16 + 4 * i)) | (len << (18 + 4 * i));
        }
        if dr7 != 0 {
            d.control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP;
            d.arch.debugreg[7] = dr7;
        }
        if step {
            d.control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP;
        }
        if inject {
            d.control |= KVM_GUESTDBG_INJECT_BP;
        }
        d
    }

    /// Lets the vCPUs gdb asked for run, with the breakpoints set.
    fn go(&mut self) -> Result<(), String> {
        let n = self.vcpus.len();
        self.stepping = vec![false; n];
        let mut resumed = Vec::new();
        for i in 0..n {
            let action = self.actions.get(i).copied().unwrap_or(Action::Stay);
            let action = match action {
                Action::Stay if !self.locked => Action::Continue,
                a => a,
            };
            if action == Action::Stay {
                continue;
            }
            let Some(h) = self.vcpus[i].upgrade() else {
                continue;
            };
            let step = action == Action::Step;
            let inject = std::mem::take(&mut self.reinject[i]);
            match h.set_guest_debug(&self.debug_for(step, inject)) {
                Ok(()) => {}
                // Stopping: gdb hears the exit from vm_stopped.
                Err(crate::vcpu::CommandError::Exited(_)) => continue,
                Err(e) => return Err(e.to_string()),
            }
            self.stepping[i] = step;
            resumed.push(h);
        }
        self.running = true;
        match crate::vcpu::handle::resume_all(&resumed) {
            // A vCPU that ended the guest as the others were let go: the
            // VM is stopping, and gdb hears the exit from vm_stopped.
            Err(crate::vcpu::CommandError::Exited(_)) => Ok(()),
            r => r.map_err(|e| e.to_string()),
        }
    }

    /// Takes every breakpoint out (int3s back to the guest's bytes, debug
    /// registers and single-stepping off) and lets every vCPU run: what a
    /// gdb that goes leaves behind.
    fn release(&mut self) {
        for bp in std::mem::take(&mut self.sw).values() {
            let _ = self.mem.write_obj(bp.orig, GuestAddress(bp.gpa));
        }
        self.hw = [None; 4];
        let n = self.vcpus.len();
        self.actions = vec![Action::Continue; n];
        self.locked = false;
        if let Err(e) = self.go() {
            log::warn!("gdb: letting the guest run on: {e}");
        }
    }

    /// The guest physical address of `gva` in vCPU `tid`'s address space.
    fn translate(&self, h: &VcpuHandle, gva: u64) -> Option<u64> {
        h.translate(gva).ok().flatten()
    }

    /// What a debug exit of vCPU `index` means for gdb.
    fn classify(&self, index: usize, stop: &DebugStop) -> MultiThreadStopReason<u64> {
        let tid = tid_of(index);
        let e = &stop.exit;
        if e.exception == BP_VECTOR || e.exception == EMULATION_FAILURE {
            return MultiThreadStopReason::SwBreak(tid);
        }
        if e.exception == DB_VECTOR {
            for (i, slot) in self.hw.iter().enumerate() {
                let Some(s) = slot else { continue };
                if e.dr6 & (1 << i) == 0 {
                    continue;
                }
                return match s.watch {
                    None => MultiThreadStopReason::HwBreak(tid),
                    Some(kind) => MultiThreadStopReason::Watch {
                        tid,
                        kind,
                        addr: s.addr,
                    },
                };
            }
            if self.stepping.get(index).copied().unwrap_or(false)
                || e.dr6 & DR6_BS != 0
                || e.dr6 & DR6_HIT == 0
            {
                return MultiThreadStopReason::SignalWithThread {
                    tid,
                    signal: Signal::SIGTRAP,
                };
            }
        }
        MultiThreadStopReason::SignalWithThread {
            tid,
            signal: Signal::SIGTRAP,
        }
    }
}

impl Target for GdbTarget {
    type Arch = X86_64Kvm;
    type Error = String;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::MultiThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadBase for GdbTarget {
    fn read_registers(&mut self, regs: &mut Regs, tid: Tid) -> TargetResult<(), Self> {
        let s = self.handle(tid)?.state().map_err(|e| {
            log::warn!("gdb: reading registers: {e}");
            TargetError::Errno(libc::EIO as u8)
        })?;
        *regs = regs_of(&s);
        Ok(())
    }

    fn write_registers(&mut self, regs: &Regs, tid: Tid) -> TargetResult<(), Self> {
        let h = self.handle(tid)?;
        let io = |e: crate::vcpu::CommandError| {
            log::warn!("gdb: writing registers: {e}");
            TargetError::Errno(libc::EIO as u8)
        };
        let mut s = h.state().map_err(io)?;
        apply_regs(&mut s, regs);
        h.set_state(&s).map_err(io)
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        let h = self.handle(tid)?;
        let mut done = 0usize;
        while done < data.len() {
            let gva = start.wrapping_add(done as u64);
            let n = ((PAGE - gva % PAGE) as usize).min(data.len() - done);
            let Some(gpa) = self.translate(&h, gva) else {
                break;
            };
            if self
                .mem
                .read_slice(&mut data[done..done + n], GuestAddress(gpa))
                .is_err()
            {
                break;
            }
            done += n;
        }
        if done == 0 && !data.is_empty() {
            return Err(TargetError::Errno(libc::EFAULT as u8));
        }
        // The guest's bytes, not kvmini's int3s.
        let end = start.saturating_add(done as u64);
        for (&addr, bp) in self.sw.range(start..end) {
            data[(addr - start) as usize] = bp.orig;
        }
        Ok(done)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        let h = self.handle(tid)?;
        let mut done = 0usize;
        while done < data.len() {
            let gva = start.wrapping_add(done as u64);
            let n = ((PAGE - gva % PAGE) as usize).min(data.len() - done);
            let gpa = self
                .translate(&h, gva)
                .ok_or(TargetError::Errno(libc::EFAULT as u8))?;
            self.mem
                .write_slice(&data[done..done + n], GuestAddress(gpa))
                .map_err(|_| TargetError::Errno(libc::EFAULT as u8))?;
            done += n;
        }
        // A write over a breakpoint changes the byte under it; the int3
        // stays.
        let end = start.saturating_add(data.len() as u64);
        for (&addr, bp) in self.sw.range_mut(start..end) {
            bp.orig = data[(addr - start) as usize];
            let _ = self.mem.write_obj(INT3, GuestAddress(bp.gpa));
        }
        Ok(())
    }

    fn list_active_threads(&mut self, active: &mut dyn FnMut(Tid)) -> Result<(), String> {
        for (i, v) in self.vcpus.iter().enumerate() {
            if v.upgrade().is_some_and(|h| !h.is_finished()) {
                active(tid_of(i));
            }
        }
        Ok(())
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadResume for GdbTarget {
    fn resume(&mut self) -> Result<(), String> {
        self.go()
    }

    fn clear_resume_actions(&mut self) -> Result<(), String> {
        self.actions = vec![Action::Stay; self.vcpus.len()];
        self.locked = false;
        Ok(())
    }

    fn set_resume_action_continue(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), String> {
        // A signal cannot be delivered to a vCPU: it just continues.
        if let Some(a) = self.actions.get_mut(tid.get() - 1) {
            *a = Action::Continue;
        }
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadSingleStep for GdbTarget {
    fn set_resume_action_step(&mut self, tid: Tid, _signal: Option<Signal>) -> Result<(), String> {
        if let Some(a) = self.actions.get_mut(tid.get() - 1) {
            *a = Action::Step;
        }
        Ok(())
    }
}

impl MultiThreadSchedulerLocking for GdbTarget {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), String> {
        self.locked = true;
        Ok(())
    }
}

impl Breakpoints for GdbTarget {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for GdbTarget {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if self.sw.contains_key(&addr) {
            return Ok(true);
        }
        // Translated by vCPU 0's page tables: a kernel's text is mapped
        // alike in every vCPU.
        let h = self.handle(tid_of(0))?;
        let gpa = self
            .translate(&h, addr)
            .ok_or(TargetError::Errno(libc::EFAULT as u8))?;
        let orig: u8 = self
            .mem
            .read_obj(GuestAddress(gpa))
            .map_err(|_| TargetError::Errno(libc::EFAULT as u8))?;
        self.mem
            .write_obj(INT3, GuestAddress(gpa))
            .map_err(|_| TargetError::Errno(libc::EFAULT as u8))?;
        self.sw.insert(addr, SwBp { gpa, orig });
        Ok(true)
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        match self.sw.remove(&addr) {
            Some(bp) => {
                let _ = self.mem.write_obj(bp.orig, GuestAddress(bp.gpa));
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

impl GdbTarget {
    fn add_slot(&mut self, slot: HwSlot) -> bool {
        if self.hw.contains(&Some(slot)) {
            return true;
        }
        match self.hw.iter_mut().find(|s| s.is_none()) {
            Some(free) => {
                *free = Some(slot);
                true
            }
            // All four debug registers are in use.
            None => false,
        }
    }

    fn remove_slot(&mut self, slot: HwSlot) -> bool {
        match self.hw.iter_mut().find(|s| **s == Some(slot)) {
            Some(s) => {
                *s = None;
                true
            }
            None => false,
        }
    }
}

impl HwBreakpoint for GdbTarget {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.add_slot(HwSlot {
            addr,
            watch: None,
            len: 1,
        }))
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.remove_slot(HwSlot {
            addr,
            watch: None,
            len: 1,
        }))
    }
}

impl HwWatchpoint for GdbTarget {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        // A debug register watches 1, 2, 4 or 8 bytes, aligned to their
        // size; gdb splits or refuses anything else.
        if !matches!(len, 1 | 2 | 4 | 8) || !addr.is_multiple_of(len) {
            return Ok(false);
        }
        if self.no_data_breakpoints {
            // Refused rather than set and never fired.
            eprintln!(
                "kvmini: gdb: this host's KVM (PVM) emulates every guest instruction and \
                 fires no data breakpoints; hardware watchpoints are refused (gdb's `set \
                 can-use-hw-watchpoints 0` watches by single-stepping)"
            );
            return Ok(false);
        }
        Ok(self.add_slot(HwSlot {
            addr,
            watch: Some(kind),
            len,
        }))
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        Ok(self.remove_slot(HwSlot {
            addr,
            watch: Some(kind),
            len,
        }))
    }
}

/// The registers gdb sees, from a vCPU's state.
fn regs_of(s: &crate::vcpu::state::VcpuState) -> Regs {
    let r = &s.regs;
    let mut core = X86_64CoreRegs {
        regs: [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ],
        eflags: r.rflags as u32,
        rip: r.rip,
        ..Default::default()
    };
    let sr = &s.sregs;
    core.segments.cs = u32::from(sr.cs.selector);
    core.segments.ss = u32::from(sr.ss.selector);
    core.segments.ds = u32::from(sr.ds.selector);
    core.segments.es = u32::from(sr.es.selector);
    core.segments.fs = u32::from(sr.fs.selector);
    core.segments.gs = u32::from(sr.gs.selector);
    let f = &s.fpu;
    for (st, fpr) in core.st.iter_mut().zip(&f.fpr) {
        st.copy_from_slice(&fpr[..10]);
    }
    core.fpu.fctrl = u32::from(f.fcw);
    core.fpu.fstat = u32::from(f.fsw);
    core.fpu.ftag = full_tag(f.ftwx);
    core.fpu.fioff = f.last_ip as u32;
    core.fpu.fooff = f.last_dp as u32;
    core.fpu.fop = u32::from(f.last_opcode);
    for (x, b) in core.xmm.iter_mut().zip(&f.xmm) {
        *x = u128::from_le_bytes(*b);
    }
    core.mxcsr = f.mxcsr;
    Regs {
        core,
        fs_base: sr.fs.base,
        gs_base: sr.gs.base,
        cr0: sr.cr0,
        cr2: sr.cr2,
        cr3: sr.cr3,
        cr4: sr.cr4,
        cr8: sr.cr8,
        efer: sr.efer,
    }
}

/// The x87 tag word gdb shows, from the FXSAVE abridged one (a register
/// marked in use is shown as valid: 00, empty as 11).
fn full_tag(abridged: u8) -> u32 {
    (0..8)
        .map(|i| {
            if abridged & (1 << i) != 0 {
                0
            } else {
                0b11 << (2 * i)
            }
        })
        .sum()
}

/// Writes what gdb changed into a vCPU's state: every field whose value
/// differs from what [`regs_of`] reads (so that writing back what was
/// read changes nothing, not even the lossy x87 tag). Segment selectors
/// are not written: a selector without its descriptor would be a lie.
fn apply_regs(s: &mut crate::vcpu::state::VcpuState, new: &Regs) {
    let old = regs_of(s);
    let r = &mut s.regs;
    let gp = [
        &mut r.rax, &mut r.rbx, &mut r.rcx, &mut r.rdx, &mut r.rsi, &mut r.rdi, &mut r.rbp,
        &mut r.rsp, &mut r.r8, &mut r.r9, &mut r.r10, &mut r.r11, &mut r.r12, &mut r.r13,
        &mut r.r14, &mut r.r15,
    ];
    for (dst, v) in gp.into_iter().zip(new.core.regs) {
        *dst = v;
    }
    r.rip = new.core.rip;
    if new.core.eflags != old.core.eflags {
        // Bit 1 is always set.
        r.rflags = (r.rflags & !0xffff_ffff) | u64::from(new.core.eflags) | 2;
    }
    let f = &mut s.fpu;
    for ((fpr, st), was) in f.fpr.iter_mut().zip(&new.core.st).zip(&old.core.st) {
        if st != was {
            fpr[..10].copy_from_slice(st);
        }
    }
    for ((b, x), was) in f.xmm.iter_mut().zip(&new.core.xmm).zip(&old.core.xmm) {
        if x != was {
            *b = x.to_le_bytes();
        }
    }
    if new.core.mxcsr != old.core.mxcsr {
        f.mxcsr = new.core.mxcsr;
    }
    if new.core.fpu.fctrl != old.core.fpu.fctrl {
        f.fcw = new.core.fpu.fctrl as u16;
    }
    if new.core.fpu.fstat != old.core.fpu.fstat {
        f.fsw = new.core.fpu.fstat as u16;
    }
    let sr = &mut s.sregs;
    if new.fs_base != old.fs_base {
        sr.fs.base = new.fs_base;
    }
    if new.gs_base != old.gs_base {
        sr.gs.base = new.gs_base;
    }
    for (dst, v, was) in [
        (&mut sr.cr0, new.cr0, old.cr0),
        (&mut sr.cr2, new.cr2, old.cr2),
        (&mut sr.cr3, new.cr3, old.cr3),
        (&mut sr.cr4, new.cr4, old.cr4),
        (&mut sr.cr8, new.cr8, old.cr8),
        (&mut sr.efer, new.efer, old.efer),
    ] {
        if v != was {
            *dst = v;
        }
    }
}

/// See [`GdbServer::debug_sink`].
#[derive(Clone)]
pub struct DebugSink {
    pub stops: Sender<DebugStop>,
    pub wake: Arc<EventFd>,
    pub hold: bool,
}

type Machine = GdbStubStateMachine<'static, GdbTarget, Conn>;

/// The gdb server: its listener, at most one session, and the vCPUs' debug
/// stops. A subscriber of the main thread's event loop.
pub struct GdbServer {
    listener: Listener,
    session: Option<Machine>,
    target: GdbTarget,
    stops: Receiver<DebugStop>,
    stops_tx: Sender<DebugStop>,
    wake: Arc<EventFd>,
    control: Arc<VmControl>,
    /// A stop that came while gdb had the guest stopped already (a second
    /// vCPU's watchpoint, say): told at the next resume, instead of
    /// running.
    pending: Option<MultiThreadStopReason<u64>>,
    /// The session's socket, and whether replies wait to be written.
    session_fd: Option<RawFd>,
    unsent: bool,
}

const TOKEN_LISTEN: u32 = 0;
const TOKEN_SESSION: u32 = 1;
const TOKEN_STOPS: u32 = 2;

impl GdbServer {
    /// The server for `listener`, over guest memory `mem`.
    pub fn new(
        listener: GdbListener,
        mem: GuestMemoryMmap,
        control: Arc<VmControl>,
    ) -> io::Result<Self> {
        let (stops_tx, stops) = mpsc::channel();
        let mut target = GdbTarget::new(mem);
        target.running = !listener.wait;
        Ok(Self {
            listener: listener.listener,
            session: None,
            target,
            stops,
            stops_tx,
            wake: Arc::new(EventFd::new(EFD_NONBLOCK)?),
            control,
            pending: None,
            session_fd: None,
            unsent: false,
        })
    }

    /// What each vCPU thread is given: where it reports its debug stops,
    /// the eventfd that then wakes the server, and whether it is held.
    pub fn debug_sink(&self) -> DebugSink {
        DebugSink {
            stops: self.stops_tx.clone(),
            wake: self.wake.clone(),
            hold: !self.target.running,
        }
    }

    /// The vCPUs, once their threads run, in vCPU order.
    pub fn set_vcpus(&mut self, vcpus: Vec<Weak<VcpuHandle>>) {
        let n = vcpus.len();
        self.target.vcpus = vcpus;
        self.target.actions = vec![Action::Continue; n];
        self.target.stepping = vec![false; n];
        self.target.reinject = vec![false; n];
    }

    /// The guest's memory was cleared and loaded again (a reboot in
    /// place): kvmini's int3s are gone with it.
    pub fn memory_reset(&mut self) {
        self.target.sw.clear();
    }

    /// The VM has stopped with status `status`: a gdb waiting for the
    /// guest hears that it exited; then the session ends.
    pub fn vm_stopped(&mut self, status: u8) {
        self.session_fd = None;
        let Some(session) = self.session.take() else {
            return;
        };
        let mut last = match session {
            GdbStubStateMachine::Running(s) => {
                match s.report_stop(&mut self.target, MultiThreadStopReason::Exited(status)) {
                    Ok(m) => m,
                    Err(_) => return,
                }
            }
            m => m,
        };
        conn_of(&mut last).drain_for(std::time::Duration::from_secs(1));
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("gdb: accept failed: {e}");
                    return;
                }
            };
            if self.session.is_some() {
                // One debugger at a time; this one is told by the close.
                log::warn!("gdb: a second debugger tried to attach; refused");
                continue;
            }
            if let Err(e) = stream.set_nonblocking() {
                log::warn!("gdb: {e}");
                continue;
            }
            // gdb takes a new connection's target as stopped.
            if self.target.running {
                self.target.stop_all();
            }
            let fd = stream.fd();
            let conn = Conn {
                stream,
                out: Vec::new(),
            };
            let stub: GdbStub<'static, GdbTarget, Conn> = GdbStub::new(conn);
            match stub.run_state_machine(&mut self.target) {
                Ok(m) => {
                    eprintln!("kvmini: gdb attached");
                    self.session = Some(m);
                    self.session_fd = Some(fd);
                }
                Err(e) => log::warn!("gdb: {e}"),
            }
        }
    }

    /// Reads what gdb sent and feeds it to the state machine.
    fn read_session(&mut self) {
        let mut buf = [0u8; 4096];
        let n = {
            let Some(conn) = self.session.as_mut().map(conn_of) else {
                return;
            };
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    self.lost("the gdb connection closed");
                    return;
                }
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    return
                }
                Err(e) => {
                    self.lost(&format!("the gdb connection failed: {e}"));
                    return;
                }
            }
        };
        for &b in &buf[..n] {
            let Some(m) = self.session.take() else { return };
            let next = match m {
                GdbStubStateMachine::Idle(s) => s.incoming_data(&mut self.target, b),
                GdbStubStateMachine::Running(s) => s.incoming_data(&mut self.target, b),
                other => Ok(other),
            };
            match next {
                Ok(m) => {
                    self.session = Some(m);
                    self.settle();
                }
                Err(e) => {
                    self.lost(&format!("gdb session error: {e}"));
                    return;
                }
            }
        }
        self.flush();
    }

    /// Acts on the state the machine is in: an interrupt stops the guest,
    /// a disconnect ends the session, a resume with a stop pending reports
    /// it at once.
    fn settle(&mut self) {
        loop {
            let Some(m) = self.session.take() else { return };
            let next = match m {
                GdbStubStateMachine::CtrlCInterrupt(s) => {
                    self.target.stop_all();
                    let reason = MultiThreadStopReason::SignalWithThread {
                        tid: tid_of(0),
                        signal: Signal::SIGINT,
                    };
                    s.interrupt_handled(&mut self.target, Some(reason))
                }
                GdbStubStateMachine::Disconnected(s) => {
                    let reason = s.get_reason();
                    let mut last = GdbStubStateMachine::Disconnected(s);
                    conn_of(&mut last).drain_for(std::time::Duration::from_millis(200));
                    drop(last);
                    self.session_fd = None;
                    self.ended(reason);
                    return;
                }
                GdbStubStateMachine::Running(s) if self.pending.is_some() => {
                    let reason = self
                        .pending
                        .take()
                        .unwrap_or(MultiThreadStopReason::Signal(Signal::SIGTRAP));
                    self.target.stop_all();
                    s.report_stop(&mut self.target, reason)
                }
                m => {
                    self.session = Some(m);
                    return;
                }
            };
            match next {
                Ok(m) => self.session = Some(m),
                Err(e) => {
                    self.lost(&format!("gdb session error: {e}"));
                    return;
                }
            }
        }
    }

    /// gdb detached or killed the guest.
    fn ended(&mut self, reason: DisconnectReason) {
        match reason {
            DisconnectReason::Kill => {
                eprintln!("kvmini: gdb killed the guest");
                self.control.stop(StopReason::GdbKill);
            }
            _ => {
                eprintln!("kvmini: gdb detached; the guest runs on");
                self.target.release();
            }
        }
    }

    /// The connection is gone without a goodbye: the guest runs on.
    fn lost(&mut self, why: &str) {
        self.session = None;
        self.session_fd = None;
        eprintln!("kvmini: {why}; the guest runs on");
        self.target.release();
    }

    fn flush(&mut self) {
        let failed = match self.session.as_mut().map(conn_of) {
            Some(c) => {
                let r = c.drain().err();
                self.unsent = !c.out.is_empty();
                r
            }
            None => None,
        };
        if let Some(e) = failed {
            self.lost(&format!("the gdb connection failed: {e}"));
        }
    }

    /// Serves the vCPUs' debug stops.
    fn serve_stops(&mut self) {
        let _ = self.wake.read();
        while let Ok(stop) = self.stops.try_recv() {
            let index = usize::from(stop.id);
            let Some(h) = self.target.vcpus.get(index).and_then(Weak::upgrade) else {
                continue;
            };
            if stop.exit.exception == EMULATION_FAILURE
                && !self.target.sw.contains_key(&stop.exit.pc)
            {
                // Not at kvmini's int3: the crash it is without a debugger.
                self.control.stop(StopReason::Crash(format!(
                    "KVM internal error (suberror 1: emulation failure) at rip {:#x} on vCPU \
                     {index}",
                    stop.exit.pc
                )));
                continue;
            }
            if stop.exit.exception == BP_VECTOR && !self.target.sw.contains_key(&stop.exit.pc) {
                // The guest's own int3: handed back to it when it runs.
                if let Some(r) = self.target.reinject.get_mut(index) {
                    *r = true;
                }
                if self.target.running {
                    let step = self.target.stepping.get(index).copied().unwrap_or(false);
                    self.target.reinject[index] = false;
                    let d = self.target.debug_for(step, true);
                    if let Err(e) = h.set_guest_debug(&d).and_then(|()| h.resume()) {
                        log::warn!("gdb: handing an int3 back to vCPU {index}: {e}");
                    }
                }
                continue;
            }
            let reason = self.target.classify(index, &stop);
            match self.session.take() {
                Some(GdbStubStateMachine::Running(s)) if self.target.running => {
                    self.target.stop_all();
                    match s.report_stop(&mut self.target, reason) {
                        Ok(m) => self.session = Some(m),
                        Err(e) => self.lost(&format!("gdb session error: {e}")),
                    }
                }
                Some(m) => {
                    // Stopped already: a watchpoint's trap would be lost if
                    // not told later; a breakpoint or a step is met again.
                    if matches!(reason, MultiThreadStopReason::Watch { .. }) {
                        self.pending.get_or_insert(reason);
                    }
                    self.session = Some(m);
                }
                None => {
                    // No debugger (it went while this vCPU stopped): run on.
                    let d = self.target.debug_for(false, false);
                    let _ = h.set_guest_debug(&d).and_then(|()| h.resume());
                }
            }
        }
        self.flush();
    }
}

fn conn_of(m: &mut Machine) -> &mut Conn {
    match m {
        GdbStubStateMachine::Idle(s) => s.borrow_conn(),
        GdbStubStateMachine::Running(s) => s.borrow_conn(),
        GdbStubStateMachine::CtrlCInterrupt(s) => s.borrow_conn(),
        GdbStubStateMachine::Disconnected(s) => s.borrow_conn(),
    }
}

impl Subscriber for GdbServer {
    fn interest(&self, set: &mut Interest) {
        set.add(self.listener.fd(), libc::POLLIN, TOKEN_LISTEN);
        set.add(self.wake.as_raw_fd(), libc::POLLIN, TOKEN_STOPS);
        if let Some(fd) = self.session_fd {
            let events = if self.unsent {
                libc::POLLIN | libc::POLLOUT
            } else {
                libc::POLLIN
            };
            set.add(fd, events, TOKEN_SESSION);
        }
    }

    fn ready(&mut self, token: u32, revents: libc::c_short, _control: &VmControl) {
        match token {
            TOKEN_LISTEN => self.accept(),
            TOKEN_STOPS => self.serve_stops(),
            _ => {
                if revents & libc::POLLOUT != 0 {
                    self.flush();
                }
                if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                    self.read_session();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse("tcp::1234").unwrap(),
            GdbConfig {
                addr: GdbAddr::Tcp("127.0.0.1:1234".into()),
                wait: true
            }
        );
        assert_eq!(
            parse("tcp:0.0.0.0:1,nowait").unwrap(),
            GdbConfig {
                addr: GdbAddr::Tcp("0.0.0.0:1".into()),
                wait: false
            }
        );
        assert_eq!(
            parse("/tmp/gdb.sock").unwrap().addr,
            GdbAddr::Unix("/tmp/gdb.sock".into())
        );
        for bad in ["", ",nowait", "tcp:1234x", "tcp:host:99999", "tcp:nocolon"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn registers_go_to_gdb_and_back_unchanged() {
        let mut r = Regs::default();
        r.core.rip = 0x1234_5678;
        r.core.regs[7] = 0xdead;
        r.fs_base = 0x1111;
        r.cr3 = 0x3000;
        r.efer = 0xd01;
        let mut bytes = Vec::new();
        r.gdb_serialize(|b| bytes.push(b.unwrap_or(0)));
        assert_eq!(bytes.len(), CORE_BYTES + 8 * EXTRA);
        let mut back = Regs::default();
        back.gdb_deserialize(&bytes).unwrap();
        assert_eq!(back, r);
        assert!(back.gdb_deserialize(&bytes[..CORE_BYTES]).is_err());
    }

    #[test]
    fn the_target_description_names_every_register_once() {
        let names: Vec<&str> = TARGET_XML
            .split("<reg name=\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .collect();
        // 16 + rip + eflags + 6 segments + 8 st + 8 x87 + 16 xmm + mxcsr,
        // then fs_base, gs_base and six control registers.
        assert_eq!(names.len(), 57 + EXTRA);
        assert_eq!(names[16], "rip");
        assert_eq!(names[57], "fs_base");
        assert_eq!(names.last(), Some(&"efer"));
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
    }

    #[test]
    fn debug_registers_follow_the_slots() {
        let mem = crate::memory::create(16 << 20).unwrap();
        let mut t = GdbTarget::new(mem);
        assert_eq!(t.debug_for(false, false).control, 0);
        assert!(t.add_slot(HwSlot {
            addr: 0x1000,
            watch: None,
            len: 1
        }));
        assert!(t.add_slot(HwSlot {
            addr: 0x2000,
            watch: Some(WatchKind::Write),
            len: 8
        }));
        let d = t.debug_for(true, false);
        assert_eq!(
            d.control,
            KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP | KVM_GUESTDBG_SINGLESTEP
        );
        assert_eq!(d.arch.debugreg[0], 0x1000);
        assert_eq!(d.arch.debugreg[1], 0x2000);
        // G0; G1 with R/W1 = 01 (write) and LEN1 = 10 (8 bytes).
        assert_eq!(
            d.arch.debugreg[7],
            0b10 | 0b1000 | (0b01 << 20) | (0b10 << 22)
        );
        for a in [0x3000, 0x4000] {
            assert!(t.add_slot(HwSlot {
                addr: a,
                watch: None,
                len: 1
            }));
        }
        assert!(!t.add_slot(HwSlot {
            addr: 0x5000,
            watch: None,
            len: 1
        }));
        assert!(t.remove_slot(HwSlot {
            addr: 0x1000,
            watch: None,
            len: 1
        }));
        assert!(!t.remove_slot(HwSlot {
            addr: 0x1000,
            watch: None,
            len: 1
        }));
    }

    #[test]
    fn the_abridged_tag_word_widens() {
        assert_eq!(full_tag(0), 0xffff);
        assert_eq!(full_tag(0xff), 0);
        assert_eq!(full_tag(0b1), 0xfffc);
    }
}
