/* Prints a marker on COM1 and powers off through the ACPI sleep register. */
        .include "common.S"
        .org 0x200
entry:
        PRINT msg, msg_len
        POWER_OFF
msg:    .ascii "securevm-tiny-guest: hello\n"
        .set msg_len, . - msg
