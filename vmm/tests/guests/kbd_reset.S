/* Reboots the way `reboot=k` does: i8042 command 0xfe. */
        .include "common.S"
        .org 0x200
entry:
        mov $0x64, %dx
        mov $0xfe, %al
        out %al, (%dx)
1:      hlt
        jmp 1b
