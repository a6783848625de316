/* A stand-in for UEFI firmware, loaded at 1 MiB from a PVH ELF and
 * entered at its note's entry in 32-bit protected mode with EBX = the
 * hvm_start_info: checks the start info (magic, no modules or command
 * line, a memory map) and the RSDP it points to, prints the verdict on
 * COM1 and resets through the keyboard controller. No stack: PVH gives
 * none. */
        .code32
        .set LOAD_ADDRESS, 0x100000
        .set COM1, 0x3f8
        .set I8042_COMMAND, 0x64
        .set I8042_RESET, 0xfe
        .set START_INFO_MAGIC, 0x336ec578

start:
        cmpl $START_INFO_MAGIC, (%ebx)
        jne bad
        cmpl $0, 12(%ebx)               /* nr_modules */
        jne bad
        cmpl $0, 24(%ebx)               /* cmdline_paddr */
        jne bad
        cmpl $0, 48(%ebx)               /* memmap_entries */
        je bad
        mov 32(%ebx), %esi              /* rsdp_paddr */
        cmpl $0x20445352, (%esi)        /* "RSD " */
        jne bad
        cmpl $0x20525450, 4(%esi)       /* "PTR " */
        jne bad
        mov $(LOAD_ADDRESS + ok - start), %esi
        mov $ok_len, %ecx
        jmp print
bad:
        mov $(LOAD_ADDRESS + not_ok - start), %esi
        mov $not_ok_len, %ecx
print:
        mov $COM1, %dx
1:      lodsb
        out %al, (%dx)
        loop 1b
        mov $I8042_COMMAND, %dx
        mov $I8042_RESET, %al
        out %al, (%dx)
2:      hlt
        jmp 2b

ok:     .ascii "pvh-firmware: start info ok\n"
        .set ok_len, . - ok
not_ok: .ascii "pvh-firmware: start info bad\n"
        .set not_ok_len, . - not_ok
