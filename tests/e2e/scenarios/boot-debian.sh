# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# boot-debian: stock kernel + Debian's own initrd + debootstrap rootfs on
# virtio-blk, 2 vCPUs, 1 GiB: reaches multi-user; the guest sees 2 CPUs and
# the RAM, and writes/reads back a file on a second disk.
TIMEOUT=420
MEMORY_MIB=1024

prepare() {
    debian_root_copy "$WORK/debian-root.img"
    truncate -s 64M "$WORK/data.img"
    mkfs.ext4 -q -F -L data "$WORK/data.img"
    make_script_disk "$WORK/e2e" "$(guest_script debian-check.sh)"
}

run() {
    vmm_run 360 --kernel "$DEBIAN_KERNEL" --initrd "$DEBIAN_INITRD" \
        --cmdline "console=ttyS0 reboot=acpi panic=-1 root=/dev/vda rw $GUEST_QUIET e2e=1" \
        --cpus 2 --memory "$MEMORY_MIB" \
        --disk "$WORK/debian-root.img" --disk "$WORK/e2e" --disk "$WORK/data.img"
    expect_exit 0
    expect_serial "SECUREVM-E2E: debian multi-user=active"
    local nproc mem wrote read stored min_kb max_kb
    nproc=$(serial_value E2E-NPROC)
    [[ $nproc == 2 ]] || fail "guest sees nproc='$nproc', expected 2"
    mem=$(serial_value E2E-MEMTOTAL-KB)
    max_kb=$((MEMORY_MIB * 1024))
    min_kb=$((max_kb * 85 / 100))
    # shellcheck disable=SC2015 # meant: fail unless both tests hold
    [[ $mem =~ ^[0-9]+$ ]] && ((mem >= min_kb && mem <= max_kb)) ||
        fail "guest MemTotal='$mem' kB, expected $min_kb..$max_kb for --memory $MEMORY_MIB"
    wrote=$(serial_value E2E-DATA-WROTE)
    read=$(serial_value E2E-DATA-READ)
    [[ -n $wrote && $wrote == "$read" ]] || fail "data disk: wrote sha256 '$wrote', read back '$read'"
    stored=$(debugfs -R "cat /e2e-data.bin" "$WORK/data.img" 2>/dev/null | sha256sum | cut -d' ' -f1)
    [[ $stored == "$wrote" ]] || fail "data disk image on the host holds sha256 $stored, guest wrote $wrote"
    expect_serial "SECUREVM-E2E: exit=0"
}
