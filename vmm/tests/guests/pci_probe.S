/* Reads the host bridge's vendor/device id twice, through configuration
 * mechanism #1 (port exits) and through ECAM (MMIO exits), prints both as
 * raw bytes between markers, reads an unmapped MMIO address (must be all
 * ones) and powers off. */
        .include "common.S"
        .set PCI_CONFIG_ADDRESS, 0xcf8
        .set PCI_CONFIG_DATA, 0xcfc
        .set UNMAPPED_MMIO, 0xdff00000
        .org 0x200
entry:
        PRINT begin, begin_len
        /* mechanism #1: enable bit, bus 0, device 0, function 0, reg 0 */
        mov $PCI_CONFIG_ADDRESS, %dx
        mov $0x80000000, %eax
        out %eax, (%dx)
        mov $PCI_CONFIG_DATA, %dx
        in (%dx), %eax
        call put_dword
        /* ECAM: bus 0 device 0 function 0 offset 0 */
        mov $ECAM_BASE, %rbx
        mov (%rbx), %eax
        call put_dword
        /* ECAM: an absent device (bus 0, device 31) reads all ones */
        mov 0xf8000(%rbx), %eax
        call put_dword
        mov $UNMAPPED_MMIO, %rbx
        mov (%rbx), %eax
        call put_dword
        PRINT end, end_len
        POWER_OFF

/* Writes the 4 bytes of eax, low first, to COM1. */
put_dword:
        mov $COM1, %dx
        mov $4, %ecx
1:      out %al, (%dx)
        shr $8, %eax
        loop 1b
        ret
begin:  .ascii "PCI["
        .set begin_len, . - begin
end:    .ascii "]\n"
        .set end_len, . - end
