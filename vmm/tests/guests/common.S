/* Shared by the tiny test guests: 64-bit code entered at the Linux boot
 * protocol's 64-bit entry (load address + 0x200) in long mode, with the
 * identity-mapped page tables and GDT that securevm sets up. The platform's
 * addresses (ACPI_SLEEP_CONTROL, ACPI_RESET, ECAM_BASE) come from
 * securevm's layout as `as --defsym` (tests/common/mod.rs). */
        .code64
        .set COM1, 0x3f8
        .set S5_POWER_OFF, 0x34   /* (SLP_TYP 5 << 2) | SLP_EN */

        /* print: rsi = string, rcx = length */
        .macro PRINT label, len
        lea \label(%rip), %rsi
        mov $\len, %ecx
        mov $COM1, %dx
1:      lodsb
        out %al, (%dx)
        loop 1b
        .endm

        .macro POWER_OFF
        mov $ACPI_SLEEP_CONTROL, %dx
        mov $S5_POWER_OFF, %al
        out %al, (%dx)
2:      hlt
        jmp 2b
        .endm
