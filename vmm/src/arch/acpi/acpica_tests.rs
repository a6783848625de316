//! Cross-checks the generated tables with ACPICA, the ACPI implementation
//! inside Linux, through Debian's `acpica-tools`:
//!
//! - `iasl` disassembles every table and compiles the DSDT back without
//!   errors: this catches malformed AML, which tests of our own encoder
//!   cannot.
//! - `acpiexec` loads the DSDT with our FADT into the ACPICA interpreter,
//!   evaluates `\_S5_`, decodes every `_CRS` the way Linux's resource code
//!   does, runs the Generic Event Device's `_EVT` (it must notify the power
//!   button for the button's interrupt and for no other, and scan the
//!   hot-plug slots for theirs), runs a slot's `_EJ0`, and runs the S5
//!   sleep sequence, which must take the hardware-reduced path.
//! - Both again for the DSDT of a VM without hot-plug, which must have no
//!   trace of the slots left.
//!
//! Each test is skipped, with a message, when its tool is not installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use vm_memory::GuestMemoryMmap;

use super::test_support::{low_memory, read, read_table, table, u64_at};
use super::{create_acpi_tables, PciHotplugSlots, PCI_HOTPLUG_GSI, POWER_BUTTON_GSI};
use crate::arch::layout::{
    pci_mmio64_window, ACPI_RESET_PORT, ACPI_S5_SLP_TYP, ACPI_SLEEP_CONTROL_PORT,
    ACPI_SLEEP_STATUS_PORT,
};

/// A scratch directory removed when the test ends.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "securevm-acpi-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create scratch dir");
        ScratchDir(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tool_available(tool: &str) -> bool {
    match Command::new(tool).arg("-v").output() {
        Ok(_) => true,
        Err(_) => {
            println!("SKIPPED: {tool} not found; install acpica-tools to check the ACPI tables");
            false
        }
    }
}

/// Runs an ACPICA `tool` with `args` in `dir` (killed after two minutes);
/// returns its combined output, failing the test if it exits non-zero or
/// reports an error, warning or exception.
fn run_tool(dir: &Path, tool: &str, args: &[&str]) -> String {
    let output = Command::new("timeout")
        .arg("120")
        .arg(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run timeout(1)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{tool} {args:?} failed:\n{text}");
    for complaint in ["Error", "Warning", "Exception", "ncorrect", "Invalid"] {
        assert!(
            !text.lines().any(|line| line.contains(complaint)
                // The compile summary line always names the counters.
                && !line.contains("Compilation successful")),
            "{tool} {args:?} reported a problem:\n{text}"
        );
    }
    text
}

/// Disassembles `bytes` as `name.dat` and returns the `.dsl` text.
fn disassemble(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let file = format!("{name}.dat");
    std::fs::write(dir.join(&file), bytes).expect("write table");
    run_tool(dir, "iasl", &["-d", &file]);
    std::fs::read_to_string(dir.join(format!("{name}.dsl"))).expect("read disassembly")
}

/// The five field values (space, bit width, bit offset, access width,
/// address) of the Generic Address Structure that iasl prints under the
/// heading `name`.
fn generic_address_fields(disassembly: &str, name: &str) -> Vec<String> {
    let heading = format!("{name} : [Generic Address Structure]");
    disassembly
        .lines()
        .skip_while(|line| !line.contains(&heading))
        .skip(1)
        .take(5)
        .filter_map(|line| {
            line.split_once(" : ")
                .map(|(_, value)| value.trim().to_string())
        })
        .collect()
}

fn assert_contains_all(text: &str, expected: &[&str]) {
    for needle in expected {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

/// The tables of a VM with `num_cpus` vCPUs, 6 GiB of RAM and 46-bit
/// physical addresses (its 64-bit PCI window is 7 GiB up to 64 TiB)
/// written to fresh guest memory: the memory, the RSDP's address, the
/// FADT and the DSDT.
fn written_tables(
    num_cpus: u8,
    hotplug: PciHotplugSlots,
) -> (GuestMemoryMmap, u64, Vec<u8>, Vec<u8>) {
    let mem = low_memory();
    let rsdp = create_acpi_tables(&mem, num_cpus, hotplug, pci_mmio64_window(6 << 30, 46))
        .expect("tables fit")
        .0;
    let fadt = table(&mem, rsdp, b"FACP");
    let dsdt = read_table(&mem, u64_at(&fadt, 140));
    (mem, rsdp, fadt, dsdt)
}

/// Compiles `dir/dsdt.dsl` back to AML: iasl must accept every construct.
fn assert_dsdt_recompiles(dir: &Path) {
    let compiled = run_tool(dir, "iasl", &["-p", "recompiled", "dsdt.dsl"]);
    assert!(
        compiled.contains("0 Errors, 0 Warnings, 0 Remarks"),
        "{compiled}"
    );
    assert!(dir.join("recompiled.aml").exists());
}

/// Loads `dsdt` with our `fadt` into ACPICA's interpreter in `dir`, runs
/// the batch `commands` and returns acpiexec's output.
fn run_acpiexec(dir: &Path, fadt: &[u8], dsdt: &[u8], commands: &str) -> String {
    std::fs::write(dir.join("dsdt.dat"), dsdt).expect("write DSDT");
    std::fs::write(dir.join("facp.dat"), fadt).expect("write FADT");
    run_tool(dir, "acpiexec", &["-b", commands, "dsdt.dat", "facp.dat"])
}

/// What iasl must print for the DSDT of a VM with hot-plug slots.
const DSDT_WITH_HOTPLUG_LINES: &[&str] = &[
    "DefinitionBlock (\"\", \"DSDT\", 2, \"SECVM \", \"SECUREVM\", 0x00000001)",
    "Scope (\\_SB)",
    "Device (PCI0)",
    "Name (_HID, EisaId (\"PNP0A08\")",
    "Name (_CID, EisaId (\"PNP0A03\")",
    "Name (_SEG, Zero)",
    "Name (_BBN, Zero)",
    "WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode,",
    "IO (Decode16,\n                    0x0CF8,",
    "0x0CF7,             // Range Maximum",
    "0x0D00,             // Range Minimum",
    "0xF300,             // Length",
    "0xC0000000,         // Range Minimum",
    "0xFBFFFFFF,         // Range Maximum",
    "Device (MBRD)",
    "Name (_HID, EisaId (\"PNP0C02\")",
    "Memory32Fixed (ReadWrite,\n                    0xFC000000,",
    "0x00100000,         // Address Length",
    "0x0600,             // Range Minimum",
    "0x0604,             // Range Minimum",
    "Device (COM1)",
    "Name (_HID, EisaId (\"PNP0501\")",
    "0x03F8,             // Range Minimum",
    "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )",
    "0x00000004,",
    "Name (_S5, Package (0x04)",
    "0x05,",
    "Device (PWRB)",
    "Name (_HID, EisaId (\"PNP0C0C\")",
    "Device (GED0)",
    "Name (_HID, \"ACPI0013\"",
    "Method (_EVT, 1, Serialized)",
    "If ((Arg0 == 0x05))",
    "Notify (\\_SB.PWRB, 0x80)",
    // PCI hot-plug
    "OperationRegion (PHPR, SystemIO, 0x0AE0, 0x0C)",
    "Field (PHPR, DWordAcc, NoLock, WriteAsZeros)",
    "PCIU,   32",
    "B0EJ,   32",
    "Device (S01)",
    "Name (_ADR, 0x00010000)",
    "Device (S1F)",
    "Name (_ADR, 0x001F0000)",
    "Name (_SUN, 0x1F)",
    "Method (_EJ0, 1, NotSerialized)",
    "B0EJ = 0x80000000",
    "Method (PSCN, 0, Serialized)",
    "Local0 = PCIU",
    "Local1 = PCID",
    "Notify (S1F, One)",
    "Notify (S1F, 0x03)",
    "If ((Arg0 == 0x06))",
    "\\_SB.PCI0.PSCN ()",
    "0x0AE0,             // Range Minimum",
    // The 64-bit PCI window of a 6 GiB VM with 46-bit addresses.
    "QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,",
    "0x00000001C0000000, // Range Minimum",
    "0x00003FFFFFFFFFFF, // Range Maximum",
    "0x00003FFE40000000, // Length",
];

#[test]
fn iasl_disassembles_every_table_and_recompiles_the_dsdt() {
    if !tool_available("iasl") {
        return;
    }
    let dir = ScratchDir::new("iasl");
    let (mem, rsdp, fadt_bytes, dsdt_bytes) = written_tables(2, PciHotplugSlots::Present);

    let dsdt = disassemble(&dir.0, "dsdt", &dsdt_bytes);
    assert_contains_all(&dsdt, DSDT_WITH_HOTPLUG_LINES);
    assert!(
        dsdt.contains(&format!("0x{POWER_BUTTON_GSI:08X},")),
        "GED interrupt missing in:\n{dsdt}"
    );
    assert_dsdt_recompiles(&dir.0);

    assert_fadt_disassembles(&dir.0, &fadt_bytes);
    assert_madt_mcfg_and_xsdt_disassemble(&dir.0, &mem, rsdp);
}

/// The FADT declares a hardware-reduced platform with its reset and sleep
/// registers in our I/O ports, and points at the DSDT.
fn assert_fadt_disassembles(dir: &Path, fadt_bytes: &[u8]) {
    let fadt = disassemble(dir, "facp", fadt_bytes);
    assert_contains_all(
        &fadt,
        &[
            "Signature : \"FACP\"",
            "Revision : 06",
            "FADT Minor Revision : 05",
            "Hardware Reduced (V5) : 1",
            "Reset Register Supported (V2) : 1",
            "8042 Present on ports 60/64 (V2) : 0",
            "VGA Not Present (V4) : 1",
            "MSI Not Supported (V4) : 0",
            "CMOS RTC Not Present (V5) : 1",
            "Value to cause reset : 01",
            &format!("DSDT Address : {:016X}", u64_at(fadt_bytes, 140)),
        ],
    );
    for (register, port) in [
        ("Reset Register", ACPI_RESET_PORT),
        ("Sleep Control Register", ACPI_SLEEP_CONTROL_PORT),
        ("Sleep Status Register", ACPI_SLEEP_STATUS_PORT),
    ] {
        assert_eq!(
            generic_address_fields(&fadt, register),
            [
                "01 [SystemIO]".to_string(),
                "08".to_string(),
                "00".to_string(),
                "01 [Byte Access:8]".to_string(),
                format!("{port:016X}"),
            ],
            "{register} in:\n{fadt}"
        );
    }
}

/// The MADT (two vCPUs, the I/O APIC, the overrides), the MCFG (ECAM on
/// bus 0) and the XSDT that lists the three tables.
fn assert_madt_mcfg_and_xsdt_disassemble(dir: &Path, mem: &GuestMemoryMmap, rsdp: u64) {
    let madt = disassemble(dir, "apic", &table(mem, rsdp, b"APIC"));
    assert_contains_all(
        &madt,
        &[
            "Signature : \"APIC\"",
            "Local Apic Address : FEE00000",
            "PC-AT Compatibility : 1",
            "Subtable Type : 00 [Processor Local APIC]",
            "Subtable Type : 01 [I/O APIC]",
            "Address : FEC00000",
            "Subtable Type : 02 [Interrupt Source Override]",
            "Interrupt : 00000002",
            "Subtable Type : 04 [Local APIC NMI]",
            "Interrupt Input LINT : 01",
        ],
    );
    assert_eq!(madt.matches("[Processor Local APIC]").count(), 2, "{madt}");

    let mcfg = disassemble(dir, "mcfg", &table(mem, rsdp, b"MCFG"));
    assert_contains_all(
        &mcfg,
        &[
            "Signature : \"MCFG\"",
            "Base Address : 00000000FC000000",
            "Segment Group Number : 0000",
            "Start Bus Number : 00",
            "End Bus Number : 00",
        ],
    );

    let xsdt_address = u64_at(&read(mem, rsdp, 36), 24);
    let xsdt = disassemble(dir, "xsdt", &read_table(mem, xsdt_address));
    assert_contains_all(&xsdt, &["Signature : \"XSDT\""]);
    assert_eq!(xsdt.matches("ACPI Table Address").count(), 3, "{xsdt}");
}

#[test]
fn acpica_interpreter_loads_the_dsdt_decodes_resources_and_powers_off() {
    if !tool_available("acpiexec") {
        return;
    }
    let dir = ScratchDir::new("acpiexec");
    let (_, _, fadt, dsdt) = written_tables(1, PciHotplugSlots::Present);
    let output = run_acpiexec(
        &dir.0,
        &fadt,
        &dsdt,
        "evaluate \\_S5_; resources \\_SB.PCI0; resources \\_SB.MBRD; \
         resources \\_SB.COM1; resources \\_SB.GED0; \
         evaluate \\_SB.GED0._EVT 5; evaluate \\_SB.GED0._EVT 4; \
         evaluate \\_SB.GED0._EVT 6; evaluate \\_SB.PCI0.S03_._EJ0 1; \
         evaluate \\_SB.PCI0.S03_._SUN; sleep 5",
    );
    // acpiexec uses the FADT we gave it, not one of its own.
    assert!(
        output.contains("FACP") && output.contains("SECUREVM"),
        "{output}"
    );
    assert_contains_all(
        &output,
        &[
            "Table [DSDT: SECUREVM]",
            "[Package] Contains 4 Elements:",
            &format!("[Integer] = {:016X}", ACPI_S5_SLP_TYP),
            // PCI0 _CRS
            "Resource Type : Bus Number Range",
            "Address Maximum : 0CF7",
            "Address Minimum : 0D00",
            "Address Minimum : C0000000",
            "Address Maximum : FBFFFFFF",
            "Consumer/Producer : ResourceProducer",
            "64-Bit QWORD Address Space Resource",
            "Address Minimum : 00000001C0000000",
            "Address Maximum : 00003FFFFFFFFFFF",
            // MBRD _CRS
            "Address : FC000000",
            "Address Length : 00100000",
            "Address Minimum : 0600",
            "Address Minimum : 0604",
            "Address Minimum : 0AE0",
            // COM1 _CRS
            "Address Minimum : 03F8",
            "Triggering : Edge",
            "Dword00 : 00000004",
            // GED0 _CRS
            &format!("Dword00 : {POWER_BUTTON_GSI:08X}"),
            &format!("Dword00 : {PCI_HOTPLUG_GSI:08X}"),
            // S03_._SUN
            "[Integer] = 0000000000000003",
            // S5 through the FADT sleep registers, as Linux does it.
            &format!("Sleep-A: {:02X}", ACPI_S5_SLP_TYP),
            "HwExtendedSleep",
            "Entering sleep state [S5]",
        ],
    );
    // Each _CRS survives ACPICA's AML -> resource -> AML round trip: the
    // comparison prints nothing after its heading (but resource-calculation
    // trace lines) when they match.
    let without_trace: Vec<&str> = output
        .lines()
        .filter(|line| !line.contains("rscalc-") && !line.contains("rslist-"))
        .collect();
    assert_eq!(
        without_trace
            .join("\n")
            .matches("Resource Conversion Comparison:\nEvaluating _SRS")
            .count(),
        4,
        "{output}"
    );
    // The GED's event method presses the button for its own interrupt only.
    assert_eq!(
        output.matches("Received a Device Notify on [PWRB]").count(),
        1,
        "{output}"
    );
    assert!(output.contains("Value 0x80"), "{output}");
}

#[test]
fn without_hotplug_the_dsdt_recompiles_loads_and_has_no_slots() {
    if !tool_available("iasl") || !tool_available("acpiexec") {
        return;
    }
    let dir = ScratchDir::new("no-hotplug");
    let (_, _, fadt, dsdt_bytes) = written_tables(1, PciHotplugSlots::Absent);

    let dsdt = disassemble(&dir.0, "dsdt", &dsdt_bytes);
    assert_contains_all(
        &dsdt,
        &[
            "Device (PCI0)",
            "Device (MBRD)",
            "Device (GED0)",
            "Notify (\\_SB.PWRB, 0x80)",
        ],
    );
    for absent in [
        "PHPR",
        "PSCN",
        "Device (S01)",
        "_EJ0",
        "0x0AE0",
        "If ((Arg0 == 0x06))",
    ] {
        assert!(!dsdt.contains(absent), "{absent} in:\n{dsdt}");
    }
    assert_dsdt_recompiles(&dir.0);

    let output = run_acpiexec(
        &dir.0,
        &fadt,
        &dsdt_bytes,
        "resources \\_SB.MBRD; resources \\_SB.GED0; \
         evaluate \\_SB.GED0._EVT 5; evaluate \\_SB.GED0._EVT 6; sleep 5",
    );
    assert_contains_all(
        &output,
        &[
            "Table [DSDT: SECUREVM]",
            "Address : FC000000",
            &format!("Dword00 : {POWER_BUTTON_GSI:08X}"),
            "Entering sleep state [S5]",
        ],
    );
    assert!(
        !output.contains(&format!("Dword00 : {PCI_HOTPLUG_GSI:08X}")),
        "{output}"
    );
    assert!(!output.contains("Address Minimum : 0AE0"), "{output}");
    assert_eq!(
        output.matches("Received a Device Notify on [PWRB]").count(),
        1,
        "{output}"
    );
}
