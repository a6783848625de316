# shellcheck shell=bash
# Helpers for e2e scenarios (sourced by tests/e2e/runner.sh and scripts/e2e).
#
# A scenario is tests/e2e/scenarios/NAME.sh defining:
#   TIMEOUT=SECONDS      limit for run() (prepare() gets its own 300 s)
#   prepare()            optional; runs on the HOST before L1 boots, in $WORK
#                        (fast disk: make per-run image copies here)
#   run()                runs where /dev/kvm boots stock guests (inside L1 on
#                        machines without VT-x/AMD-V), in $WORK; returns 0 on
#                        success, or calls `fail REASON`
# Available to both: $WORK (per-scenario dir, host-visible), $SERIAL_LOG
# ($WORK/serial.log), $SECUREVM (the VMM binary), the asset paths from
# scripts/guest-assets (GUEST_KERNEL, BUSYBOX_INITRAMFS, DEBIAN_KERNEL,
# DEBIAN_INITRD, DEBIAN_ROOTFS) and the helpers below.

# Kernel log level for guests: every console byte is a VM exit, which costs
# about a millisecond in nested TCG, so a full kernel log adds 10-20 s per
# boot. E2E_GUEST_QUIET= (empty) gives the full log for debugging.
# shellcheck disable=SC2034 # used by the scenarios
GUEST_QUIET=${E2E_GUEST_QUIET-quiet}

# fail REASON: record why the scenario failed and stop it.
fail() {
    printf '%s\n' "$*" >"$WORK/fail-reason"
    exit 1
}

# vmm_run SECONDS ARG...: run `$SECUREVM run ARG...` with stdin closed, its
# console output in $SERIAL_LOG (appended), killed after SECONDS. Sets
# VMM_EXIT to its exit status (124 = killed at the limit) and VMM_SECS.
# Before killing a hung securevm it writes what each of its threads was
# doing to $WORK/hang-diagnostics.txt, so a rare stall leaves evidence.
vmm_run() {
    local limit=$1 t0 pid deadline
    shift
    t0=$(date +%s%3N)
    {
        printf '### %s run' "$SECUREVM"
        printf ' %q' "$@"
        echo
    } >>"$SERIAL_LOG"
    "$SECUREVM" run "$@" </dev/null >>"$SERIAL_LOG" 2>&1 &
    pid=$!
    deadline=$(($(date +%s) + limit))
    while process_running "$pid" && [[ $(date +%s) -lt $deadline ]]; do
        sleep 0.5
    done
    if process_running "$pid"; then
        hang_diagnostics "$pid" >"$WORK/hang-diagnostics.txt" 2>&1 || true
        kill -TERM "$pid" 2>/dev/null || true
        sleep 5
        kill -KILL "$pid" 2>/dev/null || true
        wait_killed "$pid" 15 ||
            echo "securevm (pid $pid) survived SIGKILL for 15 s: a thread is stuck in the kernel" >>"$WORK/hang-diagnostics.txt"
        VMM_EXIT=124
    else
        set +e
        wait "$pid"
        VMM_EXIT=$?
        set -e
    fi
    VMM_SECS=$(awk -v ms=$(($(date +%s%3N) - t0)) 'BEGIN { printf "%.1f", ms / 1000 }')
    echo "### exit status $VMM_EXIT after ${VMM_SECS}s" >>"$SERIAL_LOG"
    # scripts/e2e gives a scenario whose guest crashed or hung one more run.
    [[ $VMM_EXIT -ne 4 ]] || touch "$WORK/guest-crashed"
    [[ $VMM_EXIT -ne 124 ]] || {
        touch "$WORK/guest-hung"
        fail "securevm still running after ${limit}s (killed; see hang-diagnostics.txt)"
    }
}

# process_running PID: PID exists and is not a zombie.
process_running() {
    local state
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

# wait_killed PID SECONDS: reap PID if it dies within SECONDS.
wait_killed() {
    local i
    for ((i = 0; i < $2 * 2; i++)); do
        process_running "$1" || {
            wait "$1" 2>/dev/null || true
            return 0
        }
        sleep 0.5
    done
    return 1
}

# hang_diagnostics PID: each thread's name, state, kernel wait channel,
# current system call and kernel stack, then the kernel log's tail.
hang_diagnostics() {
    local task
    echo "securevm pid $1 at $(date -u +%H:%M:%S), limit reached"
    for task in /proc/"$1"/task/*; do
        printf -- '--- thread %s (%s): state %s, wchan %s\n' "${task##*/}" \
            "$(cat "$task/comm")" "$(awk '{ print $3 }' "$task/stat")" "$(cat "$task/wchan")"
        printf '    syscall: %s\n' "$(cat "$task/syscall")"
        sed 's/^/    /' "$task/stack"
    done
    echo "--- kernel log (last 30 lines)"
    dmesg | tail -n 30
}

# debian_root_copy IMAGE: a copy of the Debian root filesystem shrunk to
# what it holds plus 256 MiB (the guest's logs and markers fit): every byte
# of an image crosses L1's 9p share when the scenario starts, holes too.
debian_root_copy() {
    cp --sparse=always "$DEBIAN_ROOTFS" "$1"
    e2fsck -fy "$1" >/dev/null 2>&1 || true
    resize2fs -M "$1" >/dev/null 2>&1
    truncate -s +256M "$1"
    resize2fs "$1" >/dev/null 2>&1
}

# expect_exit CODE: the last vmm_run exited with CODE.
expect_exit() {
    [[ $VMM_EXIT -eq $1 ]] || fail "securevm exited $VMM_EXIT, expected $1 ($(vmm_exit_meaning "$VMM_EXIT"))"
}

vmm_exit_meaning() {
    case $1 in
    0) echo "guest powered off" ;;
    1) echo "securevm error: $(cat "$SERIAL_LOG" ${VMM_ERR:+"$VMM_ERR"} | grep -v '^###' | grep -i error | tail -n1)" ;;
    2) echo "command-line usage error" ;;
    3) echo "guest rebooted" ;;
    4) echo "guest crashed" ;;
    *) echo "unexpected status" ;;
    esac
}

# serial_value KEY: the value printed by the guest as `KEY=value` (last one).
# securevm's own messages share the log and can land in the middle of a
# guest line (`E2E-TCP-securevm: network: ...` then `VPN=ok`); such a
# spliced-in message (or run of them) is cut out so that the guest's line
# is whole again.
serial_value() {
    tr -d '\r' <"$SERIAL_LOG" | perl -0pe 's/(?<=[^\n])(?:securevm: [^\n]*\n)+//g' |
        sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" | tail -n1
}

# expect_serial TEXT: the guest printed a line containing TEXT.
expect_serial() {
    # Not `grep -q`: it would quit at the first match, `tr` would die of
    # SIGPIPE on a long log, and pipefail would turn the match into a failure.
    tr -d '\r' <"$SERIAL_LOG" | grep -F -- "$1" >/dev/null || fail "guest never printed '$1'"
}

# make_script_disk IMAGE FILE...: a small ext4 image with FILE... at its root
# (the first one renamed run.sh). Pass it as a disk named `e2e` (the image's
# base name is its serial) and the guest init/hook runs run.sh from it.
make_script_disk() {
    local image=$1 dir
    shift
    dir=$(mktemp -d)
    cp "$1" "$dir/run.sh"
    shift
    [[ $# -eq 0 ]] || cp "$@" "$dir/"
    chmod 755 "$dir/run.sh"
    rm -f "$image"
    mkfs.ext4 -q -F -L e2e -d "$dir" "$image" 16M >/dev/null
    rm -rf "$dir"
}

# scenario_file NAME: the guest-side script shipped beside the scenario.
guest_script() { echo "$E2E_DIR/guest/$1"; }

# load_storage_modules: what `cryptsetup open` and `mount` need in L1 for
# aes-xts-plain64 volumes on image files holding ext4. L1's kernel cannot
# load modules on demand (its module helper runs outside the chroot).
load_storage_modules() {
    local m
    for m in loop dm_mod dm_crypt xts aes_generic aesni_intel ext4; do
        modprobe "$m" 2>/dev/null || true
    done
}

# Network scenarios (net-*): the guest is 192.0.2.10 behind TAP svmnet0;
# L1 answers as 192.0.2.1, .2, .3 and .53 (tests/e2e/net/peer.py).
NET_TAP=svmnet0
NET_GUEST_IP=192.0.2.10

# net_sign_policy POLICY: sign POLICY (tests/e2e/net/policy.toml for most
# net-* scenarios), as $WORK/policy.toml, with a fresh minisign key
# (minisign's own tool, so signatures from Debian's minisign are exercised).
net_sign_policy() {
    cp "$1" "$WORK/policy.toml"
    rm -f "$WORK/org.key" "$WORK/org.pub"
    minisign -G -W -p "$WORK/org.pub" -s "$WORK/org.key" >/dev/null
    minisign -S -s "$WORK/org.key" -m "$WORK/policy.toml" -t "securevm-policy version=1" >/dev/null
}

# net_prepare STEPS_FILE: the policy and a script disk for net-check.sh.
net_prepare() {
    net_sign_policy "$E2E_DIR/net/policy.toml"
    printf '%s/24\n' "$NET_GUEST_IP" >"$WORK/guest-ip"
    cp "$1" "$WORK/steps"
    make_script_disk "$WORK/e2e" "$(guest_script net-check.sh)" "$WORK/guest-ip" "$WORK/steps"
}

# net_up PEER_ARGS...: the TAP with the peer's addresses, and the peer.
net_up() {
    modprobe tun 2>/dev/null || true
    ip tuntap add "$NET_TAP" mode tap
    local a
    for a in 192.0.2.1 192.0.2.2 192.0.2.3 192.0.2.53; do
        ip addr add "$a/24" dev "$NET_TAP"
    done
    ip link set "$NET_TAP" up
    PEER_LOG=$WORK/peer.log
    : >"$PEER_LOG"
    python3 "$E2E_DIR/net/peer.py" --log "$PEER_LOG" "$@" &
    PEER_PID=$!
    local i
    for i in $(seq 50); do
        grep -q "peer ready" "$PEER_LOG" && return 0
        sleep 0.2
    done
    fail "the network peer did not start"
}

net_down() {
    kill "$PEER_PID" 2>/dev/null || true
    wait "$PEER_PID" 2>/dev/null || true
    ip link del "$NET_TAP" 2>/dev/null || true
}

# The login passphrase of the policy's user `tester` (role netuser).
NET_TESTER_PASSPHRASE="e2e tester passphrase"

# audit_args: sets AUDIT_ARGS to --audit-log $WORK/audit.jsonl --audit-key
# $WORK/audit.key (the key is created on first use); the policy's own sink
# is a path of the real machine. (L1 has no /dev/fd for `< <(...)`.)
audit_args() {
    [[ -e $WORK/audit.key ]] || "$SECUREVM" audit init-key "$WORK/audit.key" >/dev/null
    AUDIT_ARGS=(--audit-log "$WORK/audit.jsonl" --audit-key "$WORK/audit.key")
}

# net_run SECONDS: boot the busybox guest with the NIC, logged in as the
# policy's user `tester` (so role netuser's rules apply).
net_run() {
    printf '%s\n' "$NET_TESTER_PASSPHRASE" >"$WORK/tester.pass"
    audit_args
    vmm_run "$1" --kernel "$GUEST_KERNEL" --initrd "$BUSYBOX_INITRAMFS" \
        --cmdline "console=ttyS0 reboot=acpi panic=-1 $GUEST_QUIET" --memory 256 \
        --disk "$WORK/e2e" --net "tap=$NET_TAP,ip=$NET_GUEST_IP" \
        --policy "$WORK/policy.toml" --policy-key "$WORK/org.pub" \
        --user tester --passphrase-file "$WORK/tester.pass" "${AUDIT_ARGS[@]}"
}

# peer_saw TEXT: the peer logged a line containing TEXT.
peer_saw() { grep -qF -- "$1" "$PEER_LOG"; }

# capture_start NAME IFACE [TCPDUMP_ARG...]: tcpdump on IFACE into
# $WORK/NAME.pcap until captures_stop.
capture_start() {
    local name=$1 iface=$2
    shift 2
    tcpdump -Z root -i "$iface" -n -U -s 0 "$@" -w "$WORK/$name.pcap" 2>"$WORK/$name.tcpdump.log" &
    CAPTURES+=($!)
    local i
    for i in $(seq 50); do
        grep -q "listening on" "$WORK/$name.tcpdump.log" && return 0
        sleep 0.2
    done
    fail "tcpdump did not start on $iface"
}

captures_stop() {
    local pid
    sleep 1
    for pid in "${CAPTURES[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${CAPTURES[@]}"; do wait "$pid" 2>/dev/null || true; done
    CAPTURES=()
}

# packets PCAP FILTER: how many packets in PCAP match the tcpdump FILTER.
packets() { tcpdump -r "$1" -n "$2" 2>/dev/null | wc -l; }

# Identity scenarios (id-*, audit-verify): tests/e2e/identity/policy.toml,
# whose users log in with these passphrases.
ID_ALICE_PASSPHRASE="alice e2e passphrase"
ID_BOB_PASSPHRASE="bob e2e passphrase"

# id_prepare: the identity policy signed with a fresh minisign key, and the
# users' passphrase files alice.pass and bob.pass.
id_prepare() {
    cp "$E2E_DIR/identity/policy.toml" "$WORK/policy.toml"
    rm -f "$WORK/org.key" "$WORK/org.pub"
    minisign -G -W -p "$WORK/org.pub" -s "$WORK/org.key" >/dev/null
    minisign -S -s "$WORK/org.key" -m "$WORK/policy.toml" -t "securevm-policy version=1" >/dev/null
    printf '%s\n' "$ID_ALICE_PASSPHRASE" >"$WORK/alice.pass"
    printf '%s\n' "$ID_BOB_PASSPHRASE" >"$WORK/bob.pass"
}

# id_run SECONDS USER PASSPHRASE_FILE [ARG...]: boot the busybox guest with
# the e2e disk ($ID_DISK, default $WORK/e2e), logged in as USER, auditing
# into $WORK/audit.jsonl.
id_run() {
    local limit=$1 user=$2 pass=$3
    shift 3
    audit_args
    vmm_run "$limit" --kernel "$GUEST_KERNEL" --initrd "$BUSYBOX_INITRAMFS" \
        --cmdline "console=ttyS0 reboot=acpi panic=-1 $GUEST_QUIET" --memory 256 \
        --disk "${ID_DISK:-$WORK/e2e}" --policy "$WORK/policy.toml" --policy-key "$WORK/org.pub" \
        --user "$user" --passphrase-file "$pass" "${AUDIT_ARGS[@]}" "$@"
}

# audit_count EVENT: how many records of EVENT $WORK/audit.jsonl holds.
audit_count() { grep -c "\"event\":\"$1\"" "$WORK/audit.jsonl" || true; }

# audit_verify FILE: `securevm audit verify FILE` with the scenario's key;
# its output in AUDIT_OUT, its status in AUDIT_EXIT.
audit_verify() {
    set +e
    AUDIT_OUT=$("$SECUREVM" audit verify "$1" --audit-key "$WORK/audit.key" 2>&1)
    AUDIT_EXIT=$?
    set -e
}

# UEFI scenarios (boot-uefi*): the installed Debian disk of
# `scripts/guest-assets debian-uefi` booted through the firmware.

# expect_uefi_debian_booted: the guest reached multi-user running the kernel
# installed in the image, started by UEFI firmware, with its root and its
# EFI system partition mounted through /etc/fstab (tests/e2e/guest/uefi-check.sh).
expect_uefi_debian_booted() {
    local kernel
    expect_serial "SECUREVM-E2E: debian multi-user=active"
    kernel=$(serial_value E2E-UNAME-R)
    [[ $kernel == "${DEBIAN_UEFI_KERNEL_RELEASE:?}" ]] ||
        fail "the guest runs kernel '$kernel', the image has $DEBIAN_UEFI_KERNEL_RELEASE installed"
    [[ $(serial_value E2E-EFI) == present ]] || fail "the guest has no /sys/firmware/efi: not started by UEFI firmware"
    [[ $(serial_value E2E-ROOT-FSTYPE) == ext4 ]] || fail "the guest's root is not the image's ext4 root"
    [[ $(serial_value E2E-ESP-FSTYPE) == vfat ]] || fail "the EFI system partition is not mounted at /boot/efi"
    [[ $(serial_value E2E-BOOTX64) == present ]] || fail "the guest does not see \\EFI\\BOOT\\BOOTX64.EFI on its ESP"
}

# grub_bytes BINARY OUT: 64 bytes from the middle of BINARY into OUT, moved
# on until they are varied (zero padding would also match a LUKS header's).
grub_bytes() {
    python3 - "$1" "$2" <<'PY'
import sys
data = open(sys.argv[1], "rb").read()
for start in range(len(data) // 2, len(data) - 64):
    run = data[start:start + 64]
    if len(set(run)) >= 32:
        open(sys.argv[2], "wb").write(run)
        break
else:
    sys.exit(f"no varied 64-byte run in the second half of {sys.argv[1]}")
PY
}

# file_contains FILE NEEDLE_FILE: FILE holds NEEDLE_FILE's bytes somewhere
# (binary-safe, unlike grep -F with its line-separated patterns).
file_contains() {
    python3 - "$1" "$2" <<'PY'
import mmap, sys
needle = open(sys.argv[2], "rb").read()
with open(sys.argv[1], "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
    sys.exit(0 if needle and m.find(needle) >= 0 else 1)
PY
}
