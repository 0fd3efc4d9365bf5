//! Raw mode for a terminal on standard input, undone on every way out:
//! the guard's drop on a normal return, and [`restore_terminal`] from the
//! panic hook.

use std::sync::Mutex;

/// The settings to restore, shared with the panic hook.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Puts stdin in raw mode while alive.
pub struct RawTerminal(());

impl RawTerminal {
    /// Switches stdin (a terminal) to raw input. Output processing is left
    /// on so that the guest's "\n" still starts a new line.
    pub fn enter() -> std::io::Result<Self> {
        // SAFETY: termios is plain data, filled by tcgetattr.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 and a valid termios pointer.
        if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let saved = t;
        // SAFETY: t is a valid termios.
        unsafe { libc::cfmakeraw(&mut t) };
        t.c_oflag = saved.c_oflag;
        // SAFETY: fd 0 and a valid termios pointer.
        if unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
        Ok(Self(()))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Restores the terminal settings saved by [`RawTerminal::enter`], if any.
pub fn restore_terminal() {
    // try_lock: a panic while the lock is held must not deadlock here.
    if let Ok(mut saved) = SAVED.try_lock() {
        if let Some(t) = saved.take() {
            // SAFETY: fd 0 and a valid termios saved earlier.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}
