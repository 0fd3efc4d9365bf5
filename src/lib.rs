//! kvmini: a minimal type-2 hypervisor on Linux KVM.
//!
//! [`run`] boots the VM a [`VmConfig`] describes and returns why it ended;
//! [`status`] maps that to kvmini's exit-status contract.

pub mod arch;
pub mod bus;
pub mod cli;
pub mod config;
pub mod console;
pub mod control;
pub mod device_manager;
pub mod devices;
pub mod event_loop;
pub mod exec;
pub mod fatal;
pub mod gdb;
pub mod host_file;
pub mod ktap;
pub mod loader;
pub mod memory;
pub mod seccomp;
pub mod status;
pub mod teardown;
pub mod trace;
pub mod vcpu;
pub mod vm;
pub mod vmm;

pub use config::VmConfig;
pub use control::StopReason;
pub use vmm::{run, Error, Outcome};
