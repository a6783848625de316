#!/bin/sh
# What: /usr/local/sbin/securevm-e2e-hook in the Debian desktop guest image
# (scripts/guest-assets target debian-desktop copies this file in verbatim;
# its hash is part of that target's cache key). It replaces the `debian`
# image's hook of the same name.
# Who runs it: systemd in the guest, through securevm-e2e.service
# (desktop-e2e.service beside this file), only with e2e=1 on the kernel
# command line. Unlike the console image's hook it does not power off at
# once: a desktop test first logs in through the screen. It waits for a
# graphical session on seat0 (the person, or the test, logs in at LightDM's
# greeter; "SECUREVM-E2E: greeter on seat0" says when it is up), prints
# "SECUREVM-E2E: graphical session on seat0 for USER", then, if a disk with virtio serial `e2e` is attached, runs its run.sh
# (which may use securevm-clipboard), prints "SECUREVM-E2E: exit=N" and
# powers off. Without that disk the guest stays up for the test to stop.
# The wait is bounded by e2e.session_timeout=SECONDS (default 900).
exec >/dev/ttyS0 2>&1 </dev/null
echo "SECUREVM-E2E: debian-desktop display-manager=$(systemctl is-active display-manager.service) uptime=$(cut -d' ' -f1 /proc/uptime)"
timeout=900
read -r cmdline </proc/cmdline
for arg in $cmdline; do
    case $arg in
    e2e.session_timeout=*) timeout=${arg#e2e.session_timeout=} ;;
    esac
done
# The greeter's own session: its window follows within seconds, and a test
# types at it only then.
securevm-clipboard wait-greeter "$timeout" >/dev/null && echo "SECUREVM-E2E: greeter on seat0"
if ! user=$(securevm-clipboard wait-session "$timeout"); then
    echo "SECUREVM-E2E: no graphical session on seat0 after ${timeout}s"
    echo "SECUREVM-E2E: exit=1"
    exit 1
fi
echo "SECUREVM-E2E: graphical session on seat0 for $user"
dev=
for s in /sys/block/*/serial; do
    [ -r "$s" ] && [ "$(cat "$s")" = e2e ] && dev=/dev/$(basename "$(dirname "$s")")
done
[ -n "$dev" ] || exit 0
rc=1
if mkdir -p /run/e2e && mount -o ro "$dev" /run/e2e; then
    sh /run/e2e/run.sh
    rc=$?
    umount /run/e2e
else
    echo "SECUREVM-E2E: cannot mount $dev"
fi
echo "SECUREVM-E2E: exit=$rc"
sync
systemctl start --no-block --job-mode=replace-irreversibly poweroff.target
