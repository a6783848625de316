//! PCI: the configuration-space model, the root complex with its host
//! bridge on bus 0, and the two guest paths into configuration space
//! (mechanism #1 ports and ECAM). Stock kernels find virtio devices this
//! way, which is why virtio sits behind PCI rather than virtio-mmio.
//!
//! Wiring, once the VM (and so the `VmInterface`) exists, because adding
//! a device maps its BAR and registers its doorbells right away:
//! `PciRoot::new(mmio_bus, vm)`, then `add_virtio_device` per disk, then
//! `PciConfigIo::new(root.clone())` on the PIO bus at 0xcf8 (length 8) and
//! `PciConfigMmio::new(root.clone())` on the MMIO bus at `PCI_ECAM_START`
//! (length `PCI_ECAM_SIZE`). Keep the `Arc<PciRoot>` for the VM's
//! lifetime: ECAM holds it only weakly. When the root and the PIO bus
//! (whose `PciConfigIo` holds it) are dropped, the devices drop too and
//! their I/O threads are stopped and joined.
//!
//! PCI hot-plug: `hotplug::PciHotplug` on the PIO bus (its registers at
//! `PCI_HOTPLUG_PORT_BASE`, driven by the DSDT's AML) tells the guest about
//! devices that `PciRoot::add_hotplug_virtio_device` put in a free slot and
//! asks it to eject those `PciRoot::remove_device` will take out.

mod access;
mod config;
pub mod hotplug;
mod root;

pub use access::{PciConfigIo, PciConfigMmio};
pub use config::{
    DecodedBar, PciConfiguration, PciHeader, BAR_COUNT, COMMAND_BUS_MASTER, COMMAND_MEMORY_SPACE,
    CONFIG_SPACE_SIZE,
};
pub use hotplug::{PciHotplug, PciHotplugPorts};
pub use root::PciRoot;

use crate::arch::layout::PCI_SLOT_COUNT;

/// Capability IDs used by our devices.
pub const CAPABILITY_ID_VENDOR_SPECIFIC: u8 = 0x09;
pub const CAPABILITY_ID_MSIX: u8 = 0x11;

#[derive(Debug, thiserror::Error)]
pub enum PciError {
    #[error("PCI BAR {index} of size {size:#x} is invalid (needs a power of two of at least 16 bytes in a free BAR slot)")]
    InvalidBar { index: usize, size: u64 },
    #[error("PCI capability of {len} bytes does not fit in configuration space")]
    CapabilitySpaceFull { len: usize },
    #[error("all {PCI_SLOT_COUNT} PCI slots on bus 0 are in use; attach fewer devices")]
    NoFreeSlot,
    #[error(
        "the 32-bit PCI MMIO window has no room for a {size:#x}-byte BAR; attach fewer devices"
    )]
    MmioWindowFull { size: u64 },
    #[error("cannot map PCI BAR at {base:#x}: {source}")]
    MapBar {
        base: u64,
        #[source]
        source: crate::devices::bus::BusError,
    },
    #[error("PCI slot {0} holds no device")]
    EmptySlot(u8),
    #[error(
        "the device in PCI slot {0} was there at boot and cannot be removed while the guest runs"
    )]
    NotRemovable(u8),
    #[error("cannot set up the virtio transport: {0}")]
    Transport(String),
}

/// A function on bus 0. The root complex handles BAR placement and bus
/// mapping; the device answers configuration and BAR accesses.
pub trait PciDevice: Send {
    fn config(&self) -> &PciConfiguration;
    fn config_mut(&mut self) -> &mut PciConfiguration;

    /// Guest configuration read; devices with live registers override.
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }

    /// Guest configuration write; devices that react to capability
    /// changes (e.g. MSI-X enable) override and call the default first.
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config_mut().write(offset, data);
    }

    /// Guest access to BAR `bar` at `offset` from its base.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);

    /// BAR `bar` is now reachable at `base` on the MMIO bus (or, with
    /// `None`, no longer reachable), so that the device can move anything
    /// registered by address, such as doorbells.
    fn bar_mapped(&mut self, _bar: usize, _base: Option<u64>) {}
}

#[cfg(test)]
pub(crate) mod test_support;
