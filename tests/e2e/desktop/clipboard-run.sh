#!/bin/sh
# desktop-clipboard's run.sh on the `e2e` disk of the Debian desktop guest:
# the image's hook (tests/guest-init/desktop-e2e-hook.sh) runs it once
# alice's graphical session is on seat0. Two rounds in her X session, the
# test pushing a policy between them: each copies a text of its own to the
# clipboard (spice-vdagent offers it to securevm) and waits for a text the
# test sends as VNC cut text. In the second round the client's text comes
# first: its arrival also tells the guest that the push is done. At the end
# the guest waits for the test's ACPI power button (`ctl shutdown`). The
# test decides from the markers what the role let through.
read_file() { cat "/run/e2e/$1"; }
# spice-vdagent's session agent starts with the session. Its daemon's
# socket listens once udev saw the port (the package's own rule); the
# daemon itself starts when the agent connects.
for _ in $(seq 30); do
    pgrep -x spice-vdagent >/dev/null && break
    sleep 1
done
echo "E2E-VDAGENT=$(pgrep -x spice-vdagent >/dev/null && echo running || echo missing)"
echo "E2E-VDAGENTD-SOCKET=$(systemctl is-active spice-vdagentd.socket)"
# What the guest sees of the port, for a failure's diagnosis.
for port in /sys/class/virtio-ports/*; do
    [ -e "$port/name" ] && echo "E2E-PORT=${port##*/} name=$(cat "$port/name")"
done
echo "E2E-PORT-LINKS=$(echo /dev/virtio-ports/*)"
echo "E2E-VDAGENTD=$(systemctl is-active spice-vdagentd.service)"
dmesg | grep -i -E 'virtio_console|vport|virtio-ports' | tail -n 5 | sed 's/^/E2E-DMESG: /'
for port in /dev/vport*; do
    udevadm info "$port" | grep -E 'DEVLINKS|SYSTEMD|TAGS' | sed 's/^/E2E-UDEV: /'
done
journalctl -b --no-pager 2>/dev/null | grep -i -E 'vdagent|vport|virtio-ports' | tail -n 8 | sed 's/^/E2E-JOURNAL: /'
sleep 3
# yes_no ROUND TEXT SECONDS: E2E-CLIP-FROM-HOST-ROUND=yes once the clipboard
# holds TEXT, =no if it did not within SECONDS.
yes_no() {
    if securevm-clipboard wait "$2" "$3"; then
        echo "E2E-CLIP-FROM-HOST-$1=yes"
    else
        echo "E2E-CLIP-FROM-HOST-$1=no"
    fi
}
# The guest's interrupt counts around the first round, for a failure's
# diagnosis (L2 guests have crashed in this phase; is it a storm?).
irq_counts() {
    grep -E 'virtio|LOC|RES|CAL|TLB' /proc/interrupts | tr -s ' ' | sed "s/^/E2E-IRQ-$1:/"
}
irq_counts before
securevm-clipboard set "$(read_file guest-text-1)"
echo "E2E-CLIP-SET-1=done"
yes_no 1 "$(read_file host-text-1)" "$(read_file wait-secs-1)"
irq_counts after
yes_no 2 "$(read_file host-text-2)" "$(read_file wait-secs-2)"
securevm-clipboard set "$(read_file guest-text-2)"
echo "E2E-CLIP-SET-2=done"
# The test has what it needs once its client got the text: it presses the
# power button meanwhile.
sleep "$(read_file wait-secs-2)"
