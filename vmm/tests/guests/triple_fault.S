/* Loads an empty IDT and raises an exception: no handler, no double-fault
 * handler, so the CPU shuts down (triple fault). */
        .include "common.S"
        .org 0x200
entry:
        PRINT msg, msg_len
        lidt idt_empty(%rip)
        mov $0xdeadbeef, %rax
        ud2
msg:    .ascii "securevm-tiny-guest: faulting\n"
        .set msg_len, . - msg
idt_empty:
        .word 0
        .quad 0
