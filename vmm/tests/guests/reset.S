/* Prints a marker, then asks for a reboot through the ACPI reset register. */
        .include "common.S"
        .org 0x200
entry:
        PRINT msg, msg_len
        mov $ACPI_RESET, %dx
        mov $1, %al
        out %al, (%dx)
1:      hlt
        jmp 1b
msg:    .ascii "securevm-tiny-guest: reset\n"
        .set msg_len, . - msg
