//! Local APIC wiring at boot: LINT0 delivers ExtINT (the legacy PIC's
//! output, as on a PC) and LINT1 delivers NMI, the setup the MP and ACPI
//! specifications describe and Linux expects before it programs the APIC.

use kvm_bindings::kvm_lapic_state;

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const DELIVERY_MODE_SHIFT: u32 = 8;
const DELIVERY_MODE_MASK: u32 = 0x7 << DELIVERY_MODE_SHIFT;
const DELIVERY_MODE_NMI: u32 = 0x4;
const DELIVERY_MODE_EXTINT: u32 = 0x7;

/// Reads the 32-bit APIC register at `offset` of the KVM LAPIC page.
pub fn lapic_register(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_lapic_register(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + i] = byte as std::os::raw::c_char;
    }
}

fn with_delivery_mode(register: u32, mode: u32) -> u32 {
    (register & !DELIVERY_MODE_MASK) | (mode << DELIVERY_MODE_SHIFT)
}

/// Sets LINT0 to ExtINT and LINT1 to NMI, keeping the other LVT bits.
pub fn set_lint_delivery_modes(lapic: &mut kvm_lapic_state) {
    let lint0 = lapic_register(lapic, APIC_LVT_LINT0);
    set_lapic_register(
        lapic,
        APIC_LVT_LINT0,
        with_delivery_mode(lint0, DELIVERY_MODE_EXTINT),
    );
    let lint1 = lapic_register(lapic, APIC_LVT_LINT1);
    set_lapic_register(
        lapic,
        APIC_LVT_LINT1,
        with_delivery_mode(lint1, DELIVERY_MODE_NMI),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_modes_are_extint_and_nmi() {
        let mut lapic = kvm_lapic_state::default();
        // Masked, fixed delivery with vector 0x20: the mask bit must survive.
        set_lapic_register(&mut lapic, APIC_LVT_LINT0, 0x0001_0020);
        set_lapic_register(&mut lapic, APIC_LVT_LINT1, 0x0001_0500);
        set_lint_delivery_modes(&mut lapic);
        assert_eq!(lapic_register(&lapic, APIC_LVT_LINT0), 0x0001_0720);
        assert_eq!(lapic_register(&lapic, APIC_LVT_LINT1), 0x0001_0400);
        assert_eq!(lapic.regs[APIC_LVT_LINT0 + 1] as u8, 0x07);
    }
}
