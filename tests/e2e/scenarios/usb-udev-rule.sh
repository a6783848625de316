# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# usb-udev-rule: packaging/udev/60-securevm-removable.rules, checked with
# `udevadm test` (packaging/udev/test-rule.sh, which needs no udevd) on a
# real USB stick in L1: the stick and its partition get UDISKS_IGNORE=1
# and UDISKS_AUTO=0 (desktop automounters keep away), a loop device does
# not. No guest and no securevm: it checks what the package ships.
TIMEOUT=120
# shellcheck source=tests/e2e/usb/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../usb/lib.sh"

run() {
    LOOP=
    trap 'usb_teardown; [[ -z $LOOP ]] || losetup -d "$LOOP"' EXIT
    command -v udevadm >/dev/null ||
        fail "udevadm is missing (the Debian package udev): the rule cannot be tested"
    usb_setup
    local media dev name i
    media=$(mktemp -d)
    truncate -s 16M "$media/stick.img" "$media/loop.img"
    printf 'label: dos\n,8M,L\n' | sfdisk -q "$media/stick.img" || fail "sfdisk could not partition the stick's image"
    usb_plug udev "$media/stick.img" E2E-UDEV-STICK
    dev=$(usb_wait_disk E2E-UDEV-STICK)
    name=${dev#/dev/}
    for ((i = 0; i < 100; i++)); do
        [[ -e /sys/class/block/${name}1 ]] && break
        sleep 0.1
    done
    [[ -e /sys/class/block/${name}1 ]] || fail "the stick's partition ${name}1 did not appear"
    local rule_test=$E2E_DIR/../../packaging/udev/test-rule.sh
    "$rule_test" --expect-ignored "$name" >"$WORK/udev-$name.log" 2>&1 ||
        fail "the rule does not keep automounters off the stick $name: $(tail -n1 "$WORK/udev-$name.log")"
    "$rule_test" --expect-ignored "${name}1" >"$WORK/udev-${name}1.log" 2>&1 ||
        fail "the rule does not keep automounters off the partition ${name}1: $(tail -n1 "$WORK/udev-${name}1.log")"
    modprobe loop 2>/dev/null || true
    LOOP=$(losetup -f --show "$media/loop.img") || fail "losetup failed"
    "$rule_test" --expect-not-ignored "$LOOP" >"$WORK/udev-loop.log" 2>&1 ||
        fail "the rule hides a loop device from the desktop: $(tail -n1 "$WORK/udev-loop.log")"
    tail -qn1 "$WORK"/udev-*.log
}
