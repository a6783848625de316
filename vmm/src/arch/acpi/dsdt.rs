//! The DSDT: the AML namespace describing the devices that cannot be
//! discovered by probing.
//!
//! - `\_SB_.PCI0`: the PCI Express host bridge. Its `_CRS` hands the OS the
//!   bus range, the I/O ports outside the config mechanism's 0xCF8-0xCFF,
//!   the 32-bit BAR window and, when the address space has room above RAM,
//!   the 64-bit one (`layout::pci_mmio64_window`): the windows UEFI firmware
//!   assigns BARs from, so the OS keeps what the firmware programmed. ECAM
//!   itself comes from the MCFG.
//! - `\_SB_.MBRD`: motherboard resources reserving the ECAM range (Linux only
//!   trusts an MCFG region that is reserved here or in the e820 map) and the
//!   FADT's sleep and reset ports.
//! - `\_SB_.COM1`: the 16550 with its interrupt. In hardware-reduced mode
//!   Linux has no legacy PIC and maps no ISA IRQs by default, so the
//!   serial port only gets its interrupt through this `_CRS`.
//! - `\_SB_.PWRB`: a control-method power button (PNP0C0C). Linux's
//!   `button` driver turns its notification 0x80 into a KEY_POWER input
//!   event, which systemd-logind or acpid answer with a clean shutdown.
//! - `\_SB_.GED0`: a Generic Event Device (ACPI0013). Hardware-reduced ACPI
//!   has no GPE block or fixed power button; a GED is how such a platform
//!   raises events. Its interrupt is [`POWER_BUTTON_GSI`] (edge, active
//!   high, raised by the VMM through an irqfd); its `_EVT` notifies `PWRB`.
//! - `\_S5_`: the sleep type value the OS writes to power off.
//!
//! - PCI hot-plug (ACPI, as Linux's `acpiphp` drives it), only for a VM
//!   that can be given devices while it runs ([`PciHotplugSlots`]): inside `PCI0`
//!   one device `Sxx_` per slot 1-31 (`_ADR` = slot << 16, `_SUN`, and an
//!   `_EJ0` that writes the slot's bit to the controller's eject
//!   register), the controller's registers as an I/O operation region
//!   (reserved in `MBRD`), and `PSCN`, which reads the "up" and "down"
//!   bitmaps and notifies each slot: 1 (device check) for a new device, 3
//!   (eject request) for one the VMM wants back. `GED0` runs `PSCN` on
//!   its second interrupt, [`PCI_HOTPLUG_GSI`]. The register semantics
//!   live in `devices::pci::hotplug`.
//!
//! Without hot-plug the DSDT has none of that: no slots, no controller
//! ports in `MBRD` and no second GED interrupt. Slots nothing can fill are
//! no use to the guest and cost its boot time (Linux makes an ACPI device,
//! a hot-plug slot and config-space probes for each).
//!
//! There is no `_PRT`: virtio-pci devices interrupt through MSI-X only and
//! need no INTx routing.

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, And, Arg, Device, EISAName, Equal, Field, FieldAccessType,
    FieldEntry, FieldLockRule, FieldUpdateRule, If, Interrupt, Local, Memory32Fixed, Method,
    MethodCall, Name, NotEqual, Notify, OpRegion, OpRegionSpace, Package, Path, ResourceTemplate,
    Scope, Store, IO, ZERO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::{Aml, AmlSink};

use super::mcfg::{LAST_BUS, PCI_SEGMENT};
use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::arch::layout::{
    AddressRange, ACPI_RESET_PORT, ACPI_S5_SLP_TYP, ACPI_SLEEP_CONTROL_PORT,
    ACPI_SLEEP_STATUS_PORT, COM1_IRQ, COM1_PORT, PCI_CONFIG_ADDRESS_PORT, PCI_ECAM_SIZE,
    PCI_ECAM_START, PCI_HOTPLUG_PORT_BASE, PCI_HOTPLUG_PORT_LEN, PCI_HOTPLUG_REGISTER_DOWN,
    PCI_HOTPLUG_REGISTER_EJECT, PCI_HOTPLUG_REGISTER_UP, PCI_MMIO32_SIZE, PCI_MMIO32_START,
    PCI_SLOT_COUNT,
};
use crate::narrow::const_narrow;

/// The interrupt (an IOAPIC pin no other device uses) through which the
/// VMM presses the power button.
pub const POWER_BUTTON_GSI: u32 = 5;
const _: () = assert!(POWER_BUTTON_GSI != COM1_IRQ);

/// The interrupt through which the VMM asks the guest to scan the
/// hot-plug slots.
pub const PCI_HOTPLUG_GSI: u32 = 6;
const _: () = assert!(PCI_HOTPLUG_GSI != COM1_IRQ && PCI_HOTPLUG_GSI != POWER_BUTTON_GSI);

/// Notification values for a slot (ACPI 6.5, 5.6.6).
const DEVICE_CHECK: u8 = 1;
const EJECT_REQUEST: u8 = 3;
/// The register layout the AML fields below are written against.
const _: () = assert!(
    PCI_HOTPLUG_REGISTER_UP == 0
        && PCI_HOTPLUG_REGISTER_DOWN == 4
        && PCI_HOTPLUG_REGISTER_EJECT == 8
);
const _: () = assert!(PCI_HOTPLUG_PORT_LEN == 12);

/// The notification value that means "button pressed" (ACPI 6.5, 5.6.6).
const BUTTON_PRESSED: u8 = 0x80;

/// Revision 2 makes AML integers 64 bits wide.
const DSDT_REVISION: u8 = 2;

/// Configuration mechanism #1 decodes 0xCF8-0xCFF (address and data).
const PCI_CONFIG_PORT_COUNT: u16 = 8;
const COM1_PORT_COUNT: u8 = 8;
/// The sleep control and status registers are adjacent, so one I/O range
/// claims both.
const _: () = assert!(ACPI_SLEEP_STATUS_PORT == ACPI_SLEEP_CONTROL_PORT + 1);

// The 32-bit window and ECAM lie below 4 GiB: their ends fit 32-bit
// resource descriptors (checked at build time by `const_narrow!`).
const PCI_MMIO32_FIRST: u32 = const_narrow!(PCI_MMIO32_START => u32);
const PCI_MMIO32_LAST: u32 = const_narrow!(PCI_MMIO32_START + PCI_MMIO32_SIZE - 1 => u32);
const PCI_ECAM_FIRST: u32 = const_narrow!(PCI_ECAM_START => u32);
const PCI_ECAM_LEN: u32 = const_narrow!(PCI_ECAM_SIZE => u32);
const _: () = assert!(PCI_ECAM_START + PCI_ECAM_SIZE <= 1 << 32);

/// Whether the guest is shown PCI hot-plug slots, their controller and its
/// interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciHotplugSlots {
    /// Devices can arrive and leave while the VM runs.
    Present,
    /// The device set is fixed at boot.
    Absent,
}

/// Builds the complete DSDT, header included, with `pci_mmio64` as the host
/// bridge's 64-bit window.
pub fn build_dsdt(hotplug: PciHotplugSlots, pci_mmio64: Option<AddressRange>) -> Vec<u8> {
    let mut system_bus = Vec::new();
    pci_host_bridge(&mut system_bus, hotplug, pci_mmio64);
    motherboard_resources(&mut system_bus, hotplug);
    com1(&mut system_bus);
    power_button(&mut system_bus);
    generic_event_device(&mut system_bus, hotplug);

    let mut aml = Scope::raw(Path::new("\\_SB_"), system_bus);
    soft_off_sleep_type(&mut aml);

    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&aml);
    dsdt.as_slice().to_vec()
}

fn pci_host_bridge(
    sink: &mut dyn AmlSink,
    hotplug: PciHotplugSlots,
    pci_mmio64: Option<AddressRange>,
) {
    let bus_numbers = AddressSpace::<u16>::new_bus_number(0, u16::from(LAST_BUS));
    let config_ports = IO::new(
        PCI_CONFIG_ADDRESS_PORT,
        PCI_CONFIG_ADDRESS_PORT,
        1,
        const_narrow!(PCI_CONFIG_PORT_COUNT => u8),
    );
    let ports_below_config = AddressSpace::<u16>::new_io(0, PCI_CONFIG_ADDRESS_PORT - 1, None);
    let ports_above_config = AddressSpace::<u16>::new_io(
        PCI_CONFIG_ADDRESS_PORT + PCI_CONFIG_PORT_COUNT,
        u16::MAX,
        None,
    );
    let mmio32_window = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO32_FIRST,
        PCI_MMIO32_LAST,
        None,
    );
    let mmio64_window = pci_mmio64.map(|window| {
        AddressSpace::<u64>::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            window.start,
            window.last(),
            None,
        )
    });
    let mut windows: Vec<&dyn Aml> = vec![
        &bus_numbers,
        &config_ports,
        &ports_below_config,
        &ports_above_config,
        &mmio32_window,
    ];
    if let Some(window) = &mmio64_window {
        windows.push(window);
    }
    let resources = ResourceTemplate::new(windows);
    let hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0A08"));
    let cid = Name::new(Path::new("_CID"), &EISAName::new("PNP0A03"));
    let seg = Name::new(Path::new("_SEG"), &PCI_SEGMENT);
    let bbn = Name::new(Path::new("_BBN"), &ZERO);
    let uid = Name::new(Path::new("_UID"), &ZERO);
    let crs = Name::new(Path::new("_CRS"), &resources);
    let mut children: Vec<&dyn Aml> = vec![&hid, &cid, &seg, &bbn, &uid, &crs];
    let mut slots = Vec::new();
    if hotplug == PciHotplugSlots::Present {
        hotplug_slots(&mut slots);
    }
    let slots = EncodedAml(slots);
    children.push(&slots);
    Device::new(Path::new("PCI0"), children).to_aml_bytes(sink);
}

/// AML terms already encoded, to sit among other terms.
struct EncodedAml(Vec<u8>);

impl Aml for EncodedAml {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

/// The slot name of device number `slot`: `S01_` .. `S1F_`.
fn slot_name(slot: usize) -> String {
    format!("S{slot:02X}_")
}

/// The hot-plug registers, one device per slot and the scan method, as
/// AML inside `PCI0` (see the module comment).
fn hotplug_slots(sink: &mut Vec<u8>) {
    let port_base = u32::from(PCI_HOTPLUG_PORT_BASE);
    let port_len = u32::from(PCI_HOTPLUG_PORT_LEN);
    OpRegion::new(
        Path::new("PHPR"),
        OpRegionSpace::SystemIO,
        &port_base,
        &port_len,
    )
    .to_aml_bytes(sink);
    Field::new(
        Path::new("PHPR"),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![
            FieldEntry::Named(*b"PCIU", 32),
            FieldEntry::Named(*b"PCID", 32),
            FieldEntry::Named(*b"B0EJ", 32),
        ],
    )
    .to_aml_bytes(sink);
    let eject_register = Path::new("B0EJ");
    for (slot, sun) in (1..PCI_SLOT_COUNT).zip(1u32..) {
        let address = sun << 16;
        let bit = 1u32 << slot;
        let eject = Store::new(&eject_register, &bit);
        Device::new(
            Path::new(&slot_name(slot)),
            vec![
                &Name::new(Path::new("_ADR"), &address),
                &Name::new(Path::new("_SUN"), &sun),
                &Method::new(Path::new("_EJ0"), 1, false, vec![&eject]),
            ],
        )
        .to_aml_bytes(sink);
    }
    // Local0 = PCIU, Local1 = PCID (each read once: reading clears), then
    // one notification per set bit.
    let (up_register, down_register) = (Path::new("PCIU"), Path::new("PCID"));
    let read_up = Store::new(&Local(0), &up_register);
    let read_down = Store::new(&Local(1), &down_register);
    let bits: Vec<u32> = (1..PCI_SLOT_COUNT).map(|slot| 1u32 << slot).collect();
    let names: Vec<Path> = (1..PCI_SLOT_COUNT)
        .map(|slot| Path::new(&slot_name(slot)))
        .collect();
    let up_tests: Vec<And> = bits
        .iter()
        .map(|bit| And::new(&ZERO, &Local(0), bit))
        .collect();
    let down_tests: Vec<And> = bits
        .iter()
        .map(|bit| And::new(&ZERO, &Local(1), bit))
        .collect();
    let up_set: Vec<NotEqual> = up_tests
        .iter()
        .map(|test| NotEqual::new(test, &ZERO))
        .collect();
    let down_set: Vec<NotEqual> = down_tests
        .iter()
        .map(|test| NotEqual::new(test, &ZERO))
        .collect();
    let checks: Vec<Notify> = names
        .iter()
        .map(|name| Notify::new(name, &DEVICE_CHECK))
        .collect();
    let ejects: Vec<Notify> = names
        .iter()
        .map(|name| Notify::new(name, &EJECT_REQUEST))
        .collect();
    let mut scan: Vec<If> = Vec::with_capacity(2 * names.len());
    for index in 0..names.len() {
        scan.push(If::new(&up_set[index], vec![&checks[index]]));
        scan.push(If::new(&down_set[index], vec![&ejects[index]]));
    }
    let mut body: Vec<&dyn Aml> = vec![&read_up, &read_down];
    body.extend(scan.iter().map(|step| step as &dyn Aml));
    Method::new(Path::new("PSCN"), 0, true, body).to_aml_bytes(sink);
}

/// Claims the ECAM range, the FADT's sleep and reset ports and the hot-plug
/// controller's ports, so that no driver or resource allocator hands them
/// to anything else.
fn motherboard_resources(sink: &mut dyn AmlSink, hotplug: PciHotplugSlots) {
    let ecam = Memory32Fixed::new(true, PCI_ECAM_FIRST, PCI_ECAM_LEN);
    let sleep_ports = IO::new(ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_CONTROL_PORT, 1, 2);
    let reset_port = IO::new(ACPI_RESET_PORT, ACPI_RESET_PORT, 1, 1);
    let hotplug_ports = IO::new(
        PCI_HOTPLUG_PORT_BASE,
        PCI_HOTPLUG_PORT_BASE,
        1,
        const_narrow!(PCI_HOTPLUG_PORT_LEN => u8),
    );
    let mut resources: Vec<&dyn Aml> = vec![&ecam, &sleep_ports, &reset_port];
    if hotplug == PciHotplugSlots::Present {
        resources.push(&hotplug_ports);
    }
    Device::new(
        Path::new("MBRD"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0C02")),
            &Name::new(Path::new("_UID"), &ZERO),
            &Name::new(Path::new("_CRS"), &ResourceTemplate::new(resources)),
        ],
    )
    .to_aml_bytes(sink);
}

fn com1(sink: &mut dyn AmlSink) {
    let ports = IO::new(COM1_PORT, COM1_PORT, 1, COM1_PORT_COUNT);
    // ExtendedInterrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive): the
    // ISA convention for a 16550.
    let irq = Interrupt::new(true, true, false, false, COM1_IRQ);
    Device::new(
        Path::new("COM1"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0501")),
            &Name::new(Path::new("_UID"), &ZERO),
            &Name::new(
                Path::new("_CRS"),
                &ResourceTemplate::new(vec![&ports, &irq]),
            ),
        ],
    )
    .to_aml_bytes(sink);
}

fn power_button(sink: &mut dyn AmlSink) {
    Device::new(
        Path::new("PWRB"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0C0C")),
            &Name::new(Path::new("_UID"), &ZERO),
        ],
    )
    .to_aml_bytes(sink);
}

/// `GED0`: `_EVT (Arg0 = GSI)` notifies the power button for its
/// interrupt and scans the hot-plug slots (if any) for theirs.
fn generic_event_device(sink: &mut dyn AmlSink, hotplug: PciHotplugSlots) {
    // ExtendedInterrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive): an
    // irqfd raises the line and lowers it at once, an edge.
    let irq = Interrupt::new(true, true, false, false, POWER_BUTTON_GSI);
    let hotplug_irq = Interrupt::new(true, true, false, false, PCI_HOTPLUG_GSI);
    let pwrb = Path::new("\\_SB_.PWRB");
    let notify = Notify::new(&pwrb, &BUTTON_PRESSED);
    let is_power_button = Equal::new(&Arg(0), &POWER_BUTTON_GSI);
    let on_power_button = If::new(&is_power_button, vec![&notify]);
    let scan = MethodCall::new(Path::new("\\_SB_.PCI0.PSCN"), vec![]);
    let is_hotplug = Equal::new(&Arg(0), &PCI_HOTPLUG_GSI);
    let on_hotplug = If::new(&is_hotplug, vec![&scan]);
    let mut interrupts: Vec<&dyn Aml> = vec![&irq];
    let mut events: Vec<&dyn Aml> = vec![&on_power_button];
    if hotplug == PciHotplugSlots::Present {
        interrupts.push(&hotplug_irq);
        events.push(&on_hotplug);
    }
    Device::new(
        Path::new("GED0"),
        vec![
            &Name::new(Path::new("_HID"), &"ACPI0013"),
            &Name::new(Path::new("_UID"), &ZERO),
            &Name::new(Path::new("_CRS"), &ResourceTemplate::new(interrupts)),
            &Method::new(Path::new("_EVT"), 1, true, events),
        ],
    )
    .to_aml_bytes(sink);
}

/// `Name (_S5_, Package () { SLP_TYP, 0, 0, 0 })`. ACPICA takes SLP_TYPa
/// from element 0; hardware-reduced sleep uses only that value.
fn soft_off_sleep_type(sink: &mut dyn AmlSink) {
    Name::new(
        Path::new("_S5_"),
        &Package::new(vec![&ACPI_S5_SLP_TYP, &ZERO, &ZERO, &ZERO]),
    )
    .to_aml_bytes(sink);
}

#[cfg(test)]
mod tests {
    // Test fixtures narrow small known values; a wrong one fails the test.
    #![allow(clippy::cast_possible_truncation)]
    use super::*;
    use crate::arch::acpi::test_support::{byte_sum, u32_at};

    fn encoded(term: &dyn Aml) -> Vec<u8> {
        let mut bytes = Vec::new();
        term.to_aml_bytes(&mut bytes);
        bytes
    }

    fn hotplug_ports() -> Vec<u8> {
        encoded(&IO::new(
            PCI_HOTPLUG_PORT_BASE,
            PCI_HOTPLUG_PORT_BASE,
            1,
            PCI_HOTPLUG_PORT_LEN as u8,
        ))
    }

    /// The GED's interrupt descriptor for `gsi`.
    fn ged_interrupt(gsi: u32) -> Vec<u8> {
        encoded(&Interrupt::new(true, true, false, false, gsi))
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack
            .windows(needle.len())
            .any(|window| window == needle)
    }

    #[test]
    fn header_and_checksum() {
        let dsdt = build_dsdt(PciHotplugSlots::Present, None);
        assert_eq!(&dsdt[0..4], b"DSDT");
        assert_eq!(u32_at(&dsdt, 4) as usize, dsdt.len());
        assert_eq!(dsdt[8], DSDT_REVISION);
        assert_eq!(byte_sum(&dsdt), 0);
    }

    #[test]
    fn names_the_expected_devices() {
        let dsdt = build_dsdt(PciHotplugSlots::Present, None);
        for name in [
            &b"_SB_"[..],
            b"PCI0",
            b"MBRD",
            b"COM1",
            b"PWRB",
            b"GED0",
            b"ACPI0013",
            b"_EVT",
            b"_CRS",
            b"_SEG",
            b"_BBN",
        ] {
            assert!(contains(&dsdt, name), "{}", name.escape_ascii());
        }
    }

    #[test]
    fn s5_package_has_the_layout_sleep_type_first() {
        let dsdt = build_dsdt(PciHotplugSlots::Present, None);
        // NameOp "_S5_" PackageOp PkgLength(7) NumElements(4)
        // BytePrefix SLP_TYP ZeroOp ZeroOp ZeroOp
        let expected = [
            0x08,
            b'_',
            b'S',
            b'5',
            b'_',
            0x12,
            0x07,
            0x04,
            0x0a,
            ACPI_S5_SLP_TYP,
            0x00,
            0x00,
            0x00,
        ];
        assert!(contains(&dsdt, &expected));
    }

    #[test]
    fn host_bridge_ids_are_pcie_root_compatible_with_pci() {
        let dsdt = build_dsdt(PciHotplugSlots::Present, None);
        let mut pnp0a08 = Vec::new();
        EISAName::new("PNP0A08").to_aml_bytes(&mut pnp0a08);
        let mut pnp0a03 = Vec::new();
        EISAName::new("PNP0A03").to_aml_bytes(&mut pnp0a03);
        assert!(contains(&dsdt, &[b"_HID".as_slice(), &pnp0a08].concat()));
        assert!(contains(&dsdt, &[b"_CID".as_slice(), &pnp0a03].concat()));
    }

    #[test]
    fn host_bridge_mmio_window_matches_the_layout() {
        let dsdt = build_dsdt(PciHotplugSlots::Present, None);
        // DWord address space descriptor: min, max, translation, length.
        let window = [
            PCI_MMIO32_FIRST.to_le_bytes(),
            PCI_MMIO32_LAST.to_le_bytes(),
            0u32.to_le_bytes(),
            (PCI_MMIO32_SIZE as u32).to_le_bytes(),
        ]
        .concat();
        assert!(contains(&dsdt, &window));
    }

    #[test]
    fn acpi_register_ports_are_reserved_as_motherboard_resources() {
        let dsdt = build_dsdt(PciHotplugSlots::Present, None);
        let mut ports = Vec::new();
        IO::new(ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_CONTROL_PORT, 1, 2).to_aml_bytes(&mut ports);
        IO::new(ACPI_RESET_PORT, ACPI_RESET_PORT, 1, 1).to_aml_bytes(&mut ports);
        assert!(contains(&dsdt, &ports));
    }

    #[test]
    fn every_slot_has_an_address_a_number_and_an_eject_method() {
        let dsdt = build_dsdt(PciHotplugSlots::Present, None);
        for slot in 1..PCI_SLOT_COUNT {
            let mut device = Vec::new();
            Name::new(Path::new("_ADR"), &((slot as u32) << 16)).to_aml_bytes(&mut device);
            Name::new(Path::new("_SUN"), &(slot as u32)).to_aml_bytes(&mut device);
            assert!(contains(&dsdt, slot_name(slot).as_bytes()), "slot {slot}");
            assert!(contains(&dsdt, &device), "slot {slot} _ADR/_SUN");
        }
        assert!(!contains(&dsdt, b"S00_"), "the host bridge is no slot");
        assert_eq!(
            dsdt.windows(4).filter(|name| *name == b"_EJ0").count(),
            PCI_SLOT_COUNT - 1
        );
        for name in [&b"PHPR"[..], b"PCIU", b"PCID", b"B0EJ", b"PSCN"] {
            assert!(contains(&dsdt, name), "{}", name.escape_ascii());
        }
    }

    #[test]
    fn hotplug_ports_are_reserved_and_the_ged_listens_on_their_interrupt() {
        let dsdt = build_dsdt(PciHotplugSlots::Present, None);
        assert!(contains(&dsdt, &hotplug_ports()));
        assert!(contains(&dsdt, &ged_interrupt(PCI_HOTPLUG_GSI)));
    }

    #[test]
    fn without_hotplug_there_are_no_slots_controller_ports_or_interrupt() {
        let with = build_dsdt(PciHotplugSlots::Present, None);
        let dsdt = build_dsdt(PciHotplugSlots::Absent, None);
        assert_eq!(byte_sum(&dsdt), 0);
        assert!(dsdt.len() < with.len());
        for name in [&b"S01_"[..], b"S1F_", b"_EJ0", b"_SUN", b"PHPR", b"PSCN"] {
            assert!(!contains(&dsdt, name), "{}", name.escape_ascii());
        }
        assert!(!contains(&dsdt, &hotplug_ports()));
        assert!(!contains(&dsdt, &ged_interrupt(PCI_HOTPLUG_GSI)));
        assert!(contains(&dsdt, &ged_interrupt(POWER_BUTTON_GSI)));
        for name in [&b"PCI0"[..], b"MBRD", b"COM1", b"PWRB", b"GED0", b"_EVT"] {
            assert!(contains(&dsdt, name), "{}", name.escape_ascii());
        }
    }

    #[test]
    fn ecam_is_reserved_as_a_motherboard_resource() {
        let dsdt = build_dsdt(PciHotplugSlots::Present, None);
        let mut ecam = Vec::new();
        Memory32Fixed::new(true, PCI_ECAM_START as u32, PCI_ECAM_SIZE as u32)
            .to_aml_bytes(&mut ecam);
        assert!(contains(&dsdt, &ecam));
    }

    #[test]
    fn host_bridge_64bit_window_is_a_qword_range_only_when_given() {
        let window = AddressRange {
            start: 0x1_4000_0000,
            size: (1 << 46) - 0x1_4000_0000,
        };
        let with = build_dsdt(PciHotplugSlots::Absent, Some(window));
        let without = build_dsdt(PciHotplugSlots::Absent, None);
        assert_eq!(byte_sum(&with), 0);
        // QWord address space descriptor: granularity, min, max,
        // translation, length.
        let qword = [
            0u64.to_le_bytes(),
            window.start.to_le_bytes(),
            window.last().to_le_bytes(),
            0u64.to_le_bytes(),
            window.size.to_le_bytes(),
        ]
        .concat();
        assert!(contains(&with, &qword));
        assert!(!contains(&without, &window.start.to_le_bytes()));
        assert_eq!(with.len(), without.len() + 46, "one QWord descriptor more");
    }
}
