//! Boots tiny hand-assembled guests on the host's /dev/kvm through the real
//! loader → `configure_boot` → `configure_vcpu` path, and checks from inside
//! the guest that it really starts in the promised state: long mode with our
//! page tables, GDT, stack and zero page for the Linux 64-bit protocol;
//! 32-bit protected mode with `hvm_start_info` in RBX for PVH.
//!
//! The guest reports what it sees with `out` instructions; the test collects
//! them. Skips (with a message) only when /dev/kvm does not exist.

// Test code narrows small known values; a wrong one fails the test.
#![allow(clippy::cast_possible_truncation)]

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use kvm_bindings::{kvm_msr_entry, kvm_userspace_memory_region, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use linux_loader::loader::bootparam::{setup_header, LOADED_HIGH, XLF_KERNEL_64};
use securevm::arch::boot_params::{configure_boot, BootConfig, BootProtocol};
use securevm::arch::interrupts::lapic_register;
use securevm::arch::layout::{
    BOOT_STACK_POINTER, KVM_TSS_START, PML4_START, PVH_START_INFO_START, RSDP_START,
    ZERO_PAGE_START,
};
use securevm::arch::memory::create_guest_memory;
use securevm::arch::msr::MSR_MTRR_DEF_TYPE;
use securevm::arch::vcpu::configure_vcpu;
use securevm::loader::{load_cmdline, load_initrd, load_kernel};
use vm_memory::{
    ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

const MEM_SIZE: u64 = 64 << 20;
const LOAD_ADDRESS: u64 = 0x10_0000;
/// The last port each guest writes; the test stops there.
const LONG_MODE_DONE_PORT: u16 = 0xa4;
const PVH_DONE_PORT: u16 = 0x8c;

/// 64-bit guest, entered at the bzImage's 64-bit entry (load address + 0x200)
/// with RSI = zero page. Assembled with GNU as (`.code64`, Intel syntax):
const LONG_MODE_GUEST: &[u8] = &[
    0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22,
    0x11, // movabs rax, 0x1122334455667788
    0x50, //                                   push rax
    0x5b, //                                   pop rbx
    0x48, 0xc1, 0xeb, 0x38, //                 shr rbx, 56
    0x88, 0xd8, //                             mov al, bl
    0xe6, 0x80, //                             out 0x80, al          ; 0x11
    0x8b, 0x86, 0x02, 0x02, 0x00, 0x00, //     mov eax, [rsi+0x202]
    0xe7, 0x84, //                             out 0x84, eax         ; "HdrS"
    0x0f, 0x20, 0xc0, //                       mov rax, cr0
    0xe7, 0x88, //                             out 0x88, eax
    0x0f, 0x20, 0xe0, //                       mov rax, cr4
    0xe7, 0x8c, //                             out 0x8c, eax
    0xb9, 0x80, 0x00, 0x00, 0xc0, //           mov ecx, 0xc0000080   ; EFER
    0x0f, 0x32, //                             rdmsr
    0xe7, 0x90, //                             out 0x90, eax
    0x8c, 0xc8, //                             mov eax, cs
    0xe7, 0x94, //                             out 0x94, eax
    0x0f, 0x20, 0xd8, //                       mov rax, cr3
    0xe7, 0x98, //                             out 0x98, eax
    0x48, 0x89, 0xe0, //                       mov rax, rsp
    0xe7, 0x9c, //                             out 0x9c, eax
    0x8b, 0x86, 0x18, 0x02, 0x00, 0x00, //     mov eax, [rsi+0x218]  ; ramdisk_image
    0xe7, 0xa0, //                             out 0xa0, eax
    0x48, 0x8d, 0x05, 0x00, 0x00, 0x00,
    0x00, // lea rax, [rip]      ; only valid in 64-bit mode
    0xe7, 0xa4, //                             out 0xa4, eax
    0xf4, //                                   hlt
];
/// Offset, from the guest's start, of the instruction after `lea rax, [rip]`.
const LEA_NEXT_OFFSET: u64 = 0x4c;

/// 32-bit guest, entered at the PVH note's address with RBX = start info.
/// Assembled with GNU as (`.code32`, Intel syntax):
const PVH_GUEST: &[u8] = &[
    0x8b, 0x03, //       mov eax, [ebx]        ; hvm_start_info.magic
    0xe7, 0x80, //       out 0x80, eax
    0x8b, 0x43, 0x20, // mov eax, [ebx+0x20]   ; hvm_start_info.rsdp_paddr
    0xe7, 0x84, //       out 0x84, eax
    0x0f, 0x20, 0xc0, // mov eax, cr0
    0xe7, 0x88, //       out 0x88, eax
    0x8c, 0xc8, //       mov eax, cs
    0xe7, 0x8c, //       out 0x8c, eax
    0xf4, //             hlt
];

/// Boot-vCPU guest that starts vCPU 1 the way Linux does: software-enable
/// the xAPIC, then INIT and SIPI (vector 0x10 → real-mode 0x1000:0000) to
/// APIC ID 1. Assembled with GNU as (`.code64`, Intel syntax):
const SMP_BOOT_GUEST: &[u8] = &[
    0xbf, 0x00, 0x00, 0xe0, 0xfe, //                               mov edi, 0xfee00000
    0xc7, 0x87, 0xf0, 0x00, 0x00, 0x00, 0xff, 0x01, 0x00, 0x00, // mov dword [rdi+0xf0], 0x1ff
    0xc7, 0x87, 0x10, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x01, // mov dword [rdi+0x310], 1 << 24
    0xc7, 0x87, 0x00, 0x03, 0x00, 0x00, 0x00, 0x45, 0x00,
    0x00, // mov dword [rdi+0x300], 0x4500 ; INIT
    0xc7, 0x87, 0x00, 0x03, 0x00, 0x00, 0x10, 0x46, 0x00,
    0x00, // mov dword [rdi+0x300], 0x4610 ; SIPI
    0xb0, 0x5a, //                                                 mov al, 0x5a
    0xe6, 0x80, //                                                 out 0x80, al
    0xf4, //                                                       hlt
];
/// Real-mode code the application processor runs after the SIPI.
/// Assembled with GNU as (`.code16`):
const AP_TRAMPOLINE: &[u8] = &[
    0xb0, 0x42, // mov al, 0x42
    0xe6, 0x81, // out 0x81, al
    0xf4, //       hlt
];
const AP_TRAMPOLINE_START: u64 = 0x1_0000;

fn kvm_or_skip() -> Option<Kvm> {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("skipping: /dev/kvm is absent on this host");
        return None;
    }
    Some(Kvm::new().expect("/dev/kvm exists but cannot be opened"))
}

/// A minimal bzImage whose protected-mode part holds `code` at offset 0x200.
fn bzimage(code: &[u8]) -> Vec<u8> {
    let setup_sects = 1u8;
    let payload_len = 0x1000usize;
    let header = setup_header {
        setup_sects,
        boot_flag: 0xaa55,
        jump: 0x6aeb,
        header: u32::from_le_bytes(*b"HdrS"),
        version: 0x020f,
        loadflags: LOADED_HIGH,
        code32_start: LOAD_ADDRESS as u32,
        syssize: (payload_len / 16) as u32,
        initrd_addr_max: 0x7fff_ffff,
        kernel_alignment: 0x1000,
        xloadflags: XLF_KERNEL_64,
        cmdline_size: 2047,
        pref_address: LOAD_ADDRESS,
        init_size: 0x10_0000,
        ..Default::default()
    };
    let setup = (usize::from(setup_sects) + 1) * 512;
    let mut image = vec![0u8; setup + payload_len];
    image[0x1f1..0x1f1 + std::mem::size_of::<setup_header>()].copy_from_slice(header.as_slice());
    image[setup + 0x200..setup + 0x200 + code.len()].copy_from_slice(code);
    image
}

/// A minimal x86-64 ELF: `code` loaded at 16 MiB, with a Xen PVH note
/// pointing at it.
fn pvh_elf(code: &[u8]) -> Vec<u8> {
    let load = 0x100_0000u64;
    let code_offset = 64 + 2 * 56;
    let note_offset = code_offset + code.len() as u64;
    let mut image = Vec::new();
    image.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    image.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    image.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    image.extend_from_slice(&1u32.to_le_bytes());
    image.extend_from_slice(&load.to_le_bytes()); // e_entry
    image.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    image.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    image.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for half in [64u16, 56, 2, 64, 0, 0] {
        image.extend_from_slice(&half.to_le_bytes());
    }
    for (p_type, offset, paddr, size) in [
        (1u32, code_offset, load, code.len() as u64),
        (4u32, note_offset, 0, 20),
    ] {
        image.extend_from_slice(&p_type.to_le_bytes());
        image.extend_from_slice(&5u32.to_le_bytes());
        for field in [offset, paddr, paddr, size, size, 4] {
            image.extend_from_slice(&field.to_le_bytes());
        }
    }
    image.extend_from_slice(code);
    for word in [4u32, 4, 18] {
        image.extend_from_slice(&word.to_le_bytes());
    }
    image.extend_from_slice(b"Xen\0");
    image.extend_from_slice(&(load as u32).to_le_bytes());
    image
}

fn create_vm(kvm: &Kvm, mem: &GuestMemoryMmap) -> VmFd {
    let vm = kvm.create_vm().expect("create VM");
    vm.set_tss_address(KVM_TSS_START as usize)
        .expect("set TSS address");
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .expect("region start is mapped");
        let region_info = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping of `region.len()` bytes owned
        // by `mem`, which outlives the VM in every test.
        unsafe { vm.set_user_memory_region(region_info) }.expect("map guest memory");
    }
    vm.create_irq_chip().expect("create in-kernel irqchip");
    vm
}

type PortWrites = BTreeMap<u16, u32>;

/// Runs `vcpu` on its own thread until it writes to `done_port`, collecting
/// every port write as (port → little-endian value).
fn spawn_vcpu(mut vcpu: VcpuFd, done_port: u16) -> mpsc::Receiver<Result<PortWrites, String>> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut writes = BTreeMap::new();
        let outcome = loop {
            match vcpu.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    let mut value = [0u8; 4];
                    value[..data.len()].copy_from_slice(data);
                    writes.insert(port, u32::from_le_bytes(value));
                    if port == done_port {
                        break Ok(writes);
                    }
                }
                Ok(other) => {
                    let exit = format!("{other:?}");
                    let regs = vcpu.get_regs().ok();
                    break Err(format!("unexpected exit {exit}, registers {regs:?}"));
                }
                // An application processor's KVM_RUN returns EAGAIN once it
                // has taken INIT/SIPI; running it again enters the guest.
                Err(error) if error.errno() == libc::EAGAIN => {}
                Err(error) => break Err(format!("KVM_RUN failed: {error}")),
            }
        };
        let _ = sender.send(outcome);
    });
    receiver
}

/// Waits for a vCPU started by `spawn_vcpu`; fails on any other exit or
/// after 10 s.
fn wait_for(receiver: mpsc::Receiver<Result<PortWrites, String>>) -> PortWrites {
    receiver
        .recv_timeout(Duration::from_secs(10))
        .expect("guest did not reach its last port write within 10 s")
        .unwrap_or_else(|message| panic!("{message}"))
}

fn run_until(vcpu: VcpuFd, done_port: u16) -> PortWrites {
    wait_for(spawn_vcpu(vcpu, done_port))
}

#[test]
fn boot_vcpu_starts_in_long_mode_with_zero_page() {
    let Some(kvm) = kvm_or_skip() else { return };
    let mem = create_guest_memory(MEM_SIZE).unwrap();
    let kernel = load_kernel(&mem, &mut Cursor::new(bzimage(LONG_MODE_GUEST))).unwrap();
    let cmdline = load_cmdline(&mem, "console=ttyS0", &kernel).unwrap();
    let initrd = load_initrd(&mem, &mut Cursor::new(vec![0x5au8; 8192]), &kernel).unwrap();
    let entry = configure_boot(
        &mem,
        &BootConfig {
            kernel: &kernel,
            cmdline,
            initrd: Some(initrd),
            mem_size: MEM_SIZE,
        },
    )
    .unwrap();
    assert_eq!(entry.protocol, BootProtocol::Linux64);

    let vm = create_vm(&kvm, &mem);
    let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    configure_vcpu(&vcpu, &kvm, &supported, 0, 1, Some(&entry)).unwrap();
    let writes = run_until(vcpu, LONG_MODE_DONE_PORT);

    assert_eq!(writes[&0x80], 0x11, "64-bit arithmetic through the stack");
    assert_eq!(
        writes[&0x84],
        u32::from_le_bytes(*b"HdrS"),
        "RSI → zero page"
    );
    let cr0 = writes[&0x88];
    assert_eq!(cr0 & 0x8000_0001, 0x8000_0001, "CR0.PG|PE: {cr0:#x}");
    assert_eq!(cr0 & 0x6000_0000, 0, "caches enabled: {cr0:#x}");
    assert_eq!(writes[&0x8c] & 0x20, 0x20, "CR4.PAE");
    assert_eq!(writes[&0x90] & 0x500, 0x500, "EFER.LME|LMA");
    assert_eq!(writes[&0x94] & 0xffff, 0x10, "CS = __BOOT_CS");
    assert_eq!(u64::from(writes[&0x98]), PML4_START, "CR3");
    assert_eq!(
        u64::from(writes[&0x9c]),
        BOOT_STACK_POINTER,
        "RSP after push/pop"
    );
    assert_eq!(u64::from(writes[&0xa0]), initrd.address.0, "ramdisk_image");
    assert_eq!(
        u64::from(writes[&0xa4]),
        LOAD_ADDRESS + 0x200 + LEA_NEXT_OFFSET,
        "RIP-relative addressing"
    );
    assert_eq!(entry.boot_params_addr.0, ZERO_PAGE_START);
}

#[test]
fn boot_vcpu_starts_in_protected_mode_for_pvh() {
    let Some(kvm) = kvm_or_skip() else { return };
    let mem = create_guest_memory(MEM_SIZE).unwrap();
    let kernel = load_kernel(&mem, &mut Cursor::new(pvh_elf(PVH_GUEST))).unwrap();
    let cmdline = load_cmdline(&mem, "console=ttyS0", &kernel).unwrap();
    let entry = configure_boot(
        &mem,
        &BootConfig {
            kernel: &kernel,
            cmdline,
            initrd: None,
            mem_size: MEM_SIZE,
        },
    )
    .unwrap();
    assert_eq!(entry.protocol, BootProtocol::Pvh);

    let vm = create_vm(&kvm, &mem);
    let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    configure_vcpu(&vcpu, &kvm, &supported, 0, 1, Some(&entry)).unwrap();
    let writes = run_until(vcpu, PVH_DONE_PORT);

    assert_eq!(writes[&0x80], 0x336e_c578, "RBX → hvm_start_info magic");
    assert_eq!(u64::from(writes[&0x84]), RSDP_START, "rsdp_paddr");
    let cr0 = writes[&0x88];
    assert_eq!(cr0 & 0x8000_0001, 1, "protected mode, paging off: {cr0:#x}");
    assert_eq!(writes[&0x8c] & 0xffff, 0x10, "CS");
    assert_eq!(entry.boot_params_addr.0, PVH_START_INFO_START);
}

#[test]
fn application_processors_get_cpuid_msrs_and_lapic() {
    let Some(kvm) = kvm_or_skip() else { return };
    let mem = create_guest_memory(MEM_SIZE).unwrap();
    let vm = create_vm(&kvm, &mem);
    let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
    for index in 0..2u8 {
        let vcpu = vm.create_vcpu(u64::from(index)).unwrap();
        configure_vcpu(&vcpu, &kvm, &supported, index, 2, None).unwrap();

        let cpuid = vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap();
        let leaf1 = cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == 1)
            .expect("leaf 1");
        assert_eq!(leaf1.ebx >> 24, u32::from(index), "APIC ID");
        assert_ne!(leaf1.ecx & (1 << 31), 0, "hypervisor bit");

        let lapic = vcpu.get_lapic().unwrap();
        assert_eq!(
            (lapic_register(&lapic, 0x350) >> 8) & 7,
            7,
            "LINT0 = ExtINT"
        );
        assert_eq!((lapic_register(&lapic, 0x360) >> 8) & 7, 4, "LINT1 = NMI");

        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_MTRR_DEF_TYPE,
            ..Default::default()
        }])
        .unwrap();
        assert_eq!(vcpu.get_msrs(&mut msrs).unwrap(), 1);
        assert_eq!(msrs.as_slice()[0].data, 0x806, "MTRRdefType");
    }
}

#[test]
fn vcpu_index_beyond_the_vm_is_refused() {
    let Some(kvm) = kvm_or_skip() else { return };
    let mem = create_guest_memory(MEM_SIZE).unwrap();
    let vm = create_vm(&kvm, &mem);
    let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let err = configure_vcpu(&vcpu, &kvm, &supported, 2, 2, None).unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
}

#[test]
fn application_processor_starts_on_init_sipi() {
    let Some(kvm) = kvm_or_skip() else { return };
    let mem = create_guest_memory(MEM_SIZE).unwrap();
    let kernel = load_kernel(&mem, &mut Cursor::new(bzimage(SMP_BOOT_GUEST))).unwrap();
    let cmdline = load_cmdline(&mem, "", &kernel).unwrap();
    let entry = configure_boot(
        &mem,
        &BootConfig {
            kernel: &kernel,
            cmdline,
            initrd: None,
            mem_size: MEM_SIZE,
        },
    )
    .unwrap();
    mem.write_slice(AP_TRAMPOLINE, GuestAddress(AP_TRAMPOLINE_START))
        .unwrap();

    let vm = create_vm(&kvm, &mem);
    let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
    let boot_vcpu = vm.create_vcpu(0).unwrap();
    configure_vcpu(&boot_vcpu, &kvm, &supported, 0, 2, Some(&entry)).unwrap();
    let application_vcpu = vm.create_vcpu(1).unwrap();
    configure_vcpu(&application_vcpu, &kvm, &supported, 1, 2, None).unwrap();

    let application = spawn_vcpu(application_vcpu, 0x81);
    let boot = spawn_vcpu(boot_vcpu, 0x80);
    assert_eq!(wait_for(boot)[&0x80], 0x5a, "boot vCPU sent INIT/SIPI");
    assert_eq!(
        wait_for(application)[&0x81],
        0x42,
        "application processor ran"
    );
}
