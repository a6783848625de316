#!/bin/sh
# What: /usr/local/sbin/securevm-e2e-hook in the Debian guest image
# (scripts/guest-assets target debian copies this file in verbatim; its hash
# is part of that target's cache key).
# Who runs it: systemd in the Debian guest, through securevm-e2e.service
# (debian-e2e.service beside this file), once multi-user.target is up and
# only with e2e=1 on the kernel command line. It mounts the disk whose
# virtio serial is `e2e`, runs its run.sh with output on the serial console,
# prints "SECUREVM-E2E: exit=N" and powers the guest off.
exec >/dev/ttyS0 2>&1 </dev/null
echo "SECUREVM-E2E: debian multi-user=$(systemctl is-active multi-user.target) uptime=$(cut -d' ' -f1 /proc/uptime)"
rc=1
dev=
for s in /sys/block/*/serial; do
    [ -r "$s" ] && [ "$(cat "$s")" = e2e ] && dev=/dev/$(basename "$(dirname "$s")")
done
if [ -z "$dev" ]; then
    echo "SECUREVM-E2E: no disk with serial e2e"
elif mkdir -p /run/e2e && mount -o ro "$dev" /run/e2e; then
    sh /run/e2e/run.sh
    rc=$?
    umount /run/e2e
else
    echo "SECUREVM-E2E: cannot mount $dev"
fi
echo "SECUREVM-E2E: exit=$rc"
sync
# What `systemctl poweroff` does, minus its logind (D-Bus) attempt: the
# minimal image has no D-Bus, and that attempt only prints an error.
systemctl start --no-block --job-mode=replace-irreversibly poweroff.target
