//! Architecture-specific setup. kvmini supports x86_64 only.

pub mod x86_64;
pub use x86_64::layout;
