//! Command-line parsing: space-separated words; the first word that is a mode
//! selects it (no mode word: hello); `seed=S`, `ops=N`, `then-spin`, `tap13`,
//! `stamp`, `ktap-end=W` and `exit-width=W` are options that may appear anywhere (first
//! occurrence wins); every other word is ignored.
//! Numbers are decimal u64; a word whose number does not parse (or, for
//! `exit=`, exceeds 255) is not a mode word and is ignored like any unknown word.

#[derive(Clone, Copy)]
pub enum Mode {
    Hello,
    Exit(u8),
    Echo,
    Flood(u64),
    Fault,
    Spin,
    Halt,
    PageTable,
    Com2,
    /// Writes `--exec`'s framed stdout/stderr on COM2 (tests/exec.rs).
    ExecIo,
    Chaos(u64),
    Reboot,
    Fresh,
    PowerOff,
    Panic,
    Post,
    Blk,
    P9,
    Loopback,
    MbInfo,
    /// `debug` or `debug=N`: N calls of the gdb tests' function (see
    /// debug.rs).
    Debug(u64),
    /// `ktap=SPEC` (see ktap.rs); the spec is in [`Args::ktap`].
    Ktap,
}

/// What `ktap=` does after its report: `ktap-end=WORD`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum KtapEnd {
    Exit,
    PowerOff,
    Fault,
    Panic,
    Spin,
}

pub struct Args {
    pub mode: Mode,
    /// The SPEC of `ktap=SPEC`.
    pub ktap: &'static [u8],
    /// `tap13` and `stamp` for ktap.
    pub tap13: bool,
    pub stamp: bool,
    /// `ktap-end=WORD` (default exit).
    pub ktap_end: KtapEnd,
    /// `exit-width=2` or `=4`: `exit=N` writes the port with outw or outl.
    pub exit_width: u8,
    /// `seed=S` for flood (default 0).
    pub seed: u64,
    /// `ops=N` for chaos (default 400).
    pub ops: u64,
    /// `then-spin` for flood: print "\nflood done\n" and spin instead of
    /// exiting.
    pub then_spin: bool,
}

pub const DEFAULT_CHAOS_OPS: u64 = 400;

/// Parse a non-empty all-digits decimal number that fits in a u64.
fn dec(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((c - b'0') as u64)?;
    }
    Some(v)
}

/// `key=<decimal>` → the number.
fn kv(word: &[u8], key: &[u8]) -> Option<u64> {
    word.strip_prefix(key)?.strip_prefix(b"=").and_then(dec)
}

fn mode_of(word: &[u8]) -> Option<Mode> {
    Some(match word {
        b"hello" => Mode::Hello,
        b"echo" => Mode::Echo,
        b"fault" => Mode::Fault,
        b"spin" => Mode::Spin,
        b"halt" => Mode::Halt,
        b"pagetable" => Mode::PageTable,
        b"com2" => Mode::Com2,
        b"execio" => Mode::ExecIo,
        b"reboot" => Mode::Reboot,
        b"fresh" => Mode::Fresh,
        b"poweroff" => Mode::PowerOff,
        b"panic" => Mode::Panic,
        b"post" => Mode::Post,
        b"blk" => Mode::Blk,
        b"p9" => Mode::P9,
        b"loopback" => Mode::Loopback,
        b"mbinfo" => Mode::MbInfo,
        b"debug" => Mode::Debug(3),
        _ => {
            if let Some(n) = kv(word, b"debug") {
                return Some(Mode::Debug(n));
            }
            if let Some(n) = kv(word, b"exit") {
                Mode::Exit(u8::try_from(n).ok()?)
            } else if let Some(n) = kv(word, b"flood") {
                Mode::Flood(n)
            } else if let Some(n) = kv(word, b"chaos") {
                Mode::Chaos(n)
            } else {
                return None;
            }
        }
    })
}

pub fn parse(cmdline: &'static [u8]) -> Args {
    let mut mode = None;
    let mut ktap: &'static [u8] = &[];
    let mut ktap_end = None;
    let (mut tap13, mut stamp) = (false, false);
    let mut exit_width = None;
    let mut seed = None;
    let mut ops = None;
    let mut then_spin = false;
    for word in cmdline.split(|&c| c == b' ').filter(|w| !w.is_empty()) {
        if mode.is_none() {
            if let Some(spec) = word.strip_prefix(b"ktap=") {
                mode = Some(Mode::Ktap);
                ktap = spec;
            } else {
                mode = mode_of(word);
            }
        }
        if ktap_end.is_none() {
            ktap_end = match word.strip_prefix(b"ktap-end=") {
                Some(b"exit") => Some(KtapEnd::Exit),
                Some(b"poweroff") => Some(KtapEnd::PowerOff),
                Some(b"fault") => Some(KtapEnd::Fault),
                Some(b"panic") => Some(KtapEnd::Panic),
                Some(b"spin") => Some(KtapEnd::Spin),
                _ => None,
            };
        }
        if exit_width.is_none() {
            exit_width = kv(word, b"exit-width").and_then(|w| u8::try_from(w).ok());
        }
        tap13 |= word == b"tap13";
        stamp |= word == b"stamp";
        if seed.is_none() {
            seed = kv(word, b"seed");
        }
        if ops.is_none() {
            ops = kv(word, b"ops");
        }
        then_spin |= word == b"then-spin";
    }
    Args {
        mode: mode.unwrap_or(Mode::Hello),
        ktap,
        tap13,
        stamp,
        ktap_end: ktap_end.unwrap_or(KtapEnd::Exit),
        exit_width: exit_width.unwrap_or(1),
        seed: seed.unwrap_or(0),
        ops: ops.unwrap_or(DEFAULT_CHAOS_OPS),
        then_spin,
    }
}
