#!/usr/bin/env bash
# test-rule.sh: checks 60-securevm-removable.rules (next to this script) on
# one block device with `udevadm test`, without installing it.
#
#   test-rule.sh --expect-ignored DEVICE       # a USB or MMC disk or partition
#   test-rule.sh --expect-not-ignored DEVICE   # any other block device
#
# DEVICE is a kernel block device name (sdb, sdb1, mmcblk0, vda, loop0) or
# its /dev path. Exit status 0 when udevadm read the rule without complaint
# and the device's properties match the expectation (--expect-ignored:
# UDISKS_IGNORE=1 and UDISKS_AUTO=0; --expect-not-ignored: no
# UDISKS_IGNORE=1), 1 when not (udevadm's output is printed), 2 for a wrong
# command line. Needs root, util-linux's unshare and overlayfs (loaded with
# modprobe when missing); udevd need not run.
#
# Why a private mount namespace: `udevadm test` reads rules only from the
# system directories, so the rule has to be in /run/udev/rules.d, where a
# running udevd would apply it to every event meanwhile; and udevadm test
# itself writes its device database under /run/udev and creates the
# /dev/disk/by-* links. In the namespace, /run is an empty tmpfs holding
# only the rule, and /dev an overlay whose changes land in that tmpfs: the
# host never sees any of it, and all of it is gone when the namespace ends,
# however the script ends.
set -euo pipefail

RULE_NAME=60-securevm-removable.rules
RULE_FILE="$(dirname "${BASH_SOURCE[0]}")/$RULE_NAME"
INSTALLED_RULE="/run/udev/rules.d/$RULE_NAME"

usage() {
    echo "usage: $0 --expect-ignored|--expect-not-ignored DEVICE" >&2
    exit 2
}

fail() {
    echo "test-rule: $*" >&2
    exit 1
}

# simulate RULE_TEXT RULE_PATH DEVICE: runs inside the private mount
# namespace (through declare -f); prints udevadm test's output, stdout and
# stderr together.
# shellcheck disable=SC2317 # called in the bash that unshare starts
simulate() {
    local rule_text=$1 rule_path=$2 device=$3
    mount -t tmpfs -o mode=0755 securevm-udev-test /run
    mkdir -p /run/udev/rules.d /run/securevm-dev/upper /run/securevm-dev/work
    mount -t overlay securevm-udev-test \
        -o lowerdir=/dev,upperdir=/run/securevm-dev/upper,workdir=/run/securevm-dev/work /dev
    printf '%s\n' "$rule_text" >"$rule_path"
    udevadm test --action=add "/sys/class/block/$device" 2>&1
}

[[ $# -eq 2 ]] || usage
case $1 in
--expect-ignored) expect_ignored=true ;;
--expect-not-ignored) expect_ignored=false ;;
*) usage ;;
esac
device=${2#/dev/}
if ! [[ $device =~ ^[A-Za-z0-9._:+-]+$ ]]; then
    echo "test-rule: \"$2\" is not a block device name such as sdb or /dev/sdb" >&2
    usage
fi
[[ -e /sys/class/block/$device ]] || fail "no block device $device (/sys/class/block/$device is missing)"
[[ $EUID -eq 0 ]] || fail "needs root (a private mount namespace)"
command -v udevadm >/dev/null || fail "udevadm is missing (Debian: apt-get install udev)"
command -v unshare >/dev/null || fail "unshare is missing (Debian: util-linux)"
[[ -r $RULE_FILE ]] || fail "cannot read $RULE_FILE"
rule_text=$(<"$RULE_FILE")
if ! grep -qw overlay /proc/filesystems; then
    modprobe overlay || fail "overlayfs is missing and modprobe overlay failed"
fi

status=0
output=$(unshare --mount --propagation private -- bash -c \
    "set -euo pipefail; $(declare -f simulate); simulate \"\$@\"" simulate "$rule_text" "$INSTALLED_RULE" "$device") ||
    status=$?
show_output() { printf '%s\n' "$output" >&2; }
if [[ $status -ne 0 ]]; then
    show_output
    fail "udevadm test (or the namespace around it) failed with status $status"
fi
if ! grep -qxF "Reading rules file: $INSTALLED_RULE" <<<"$output"; then
    show_output
    fail "udevadm did not read $INSTALLED_RULE"
fi
# udevadm starts what it finds wrong in a rules file with FILE:LINE (what
# it logs while applying a rule starts with the device name instead).
complaints=()
while IFS= read -r line; do
    [[ $line == "$INSTALLED_RULE:"* ]] && complaints+=("$line")
done <<<"$output"
if [[ ${#complaints[@]} -ne 0 ]]; then
    printf '%s\n' "${complaints[@]}" >&2
    fail "udevadm found errors in $RULE_NAME"
fi
grep -q '^DEVNAME=' <<<"$output" || {
    show_output
    fail "udevadm printed no properties for $device"
}
bus=$(sed -n 's/^ID_BUS=//p' <<<"$output")
ignore_set=false auto_off=false
grep -qx 'UDISKS_IGNORE=1' <<<"$output" && ignore_set=true
grep -qx 'UDISKS_AUTO=0' <<<"$output" && auto_off=true

if $expect_ignored; then
    if $ignore_set && $auto_off; then
        echo "test-rule: $device (ID_BUS=${bus:-none}): UDISKS_IGNORE=1 UDISKS_AUTO=0, automounters kept away, as expected"
        exit 0
    fi
    show_output
    fail "$device (ID_BUS=${bus:-none}): expected UDISKS_IGNORE=1 and UDISKS_AUTO=0, got UDISKS_IGNORE=$($ignore_set && echo 1 || echo unset) UDISKS_AUTO=$($auto_off && echo 0 || echo unset)"
fi
if ! $ignore_set; then
    echo "test-rule: $device (ID_BUS=${bus:-none}): no UDISKS_IGNORE=1, left to the desktop, as expected"
    exit 0
fi
show_output
fail "$device (ID_BUS=${bus:-none}): UDISKS_IGNORE=1 is set, but the device was expected to be left alone"
