/* Prints a marker, then a dot after every busy-wait forever: a guest that
 * is visibly running, for pausing and resuming it through the control API.
 * It never answers the ACPI power button. */
        .include "common.S"
        .org 0x200
entry:
        PRINT msg, msg_len
        mov $COM1, %dx
3:      mov $0x8000, %ecx
4:      loop 4b
        mov $'.', %al
        out %al, (%dx)
        jmp 3b
msg:    .ascii "securevm-tiny-guest: spin\n"
        .set msg_len, . - msg
