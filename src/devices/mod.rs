//! Emulated devices. Each sees only offsets into its own range.

pub mod acpi_pm;
pub mod debug_exit;
pub mod fw_cfg;
pub mod i8042;
pub mod post;
pub mod serial;
pub mod virtio;
