#!/bin/sh
# What: the /init of the L1 initramfs, the nested QEMU VM in which the e2e
# scenarios and benchmarks run (scripts/guest-assets target l1-initramfs
# copies this file in verbatim; its hash is part of that target's cache key).
# Who runs it: the L1 kernel, as PID 1, in the VM that scripts/nested starts.
# Never run it on a host: it mounts over /dev and powers the machine off.
# It loads KVM and 9p, puts the host's root (read-only 9p) under a tmpfs
# overlay, chroots into it, runs the job named by nested.job= and ends with
# __NESTED_EXIT__=<status>: scripts/nested documents the nested.* kernel
# parameters and reads the marker.
export PATH=/bin
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
say() { echo "[L1] $*"; }
finish() {
    printf '\n__NESTED_EXIT__=%s\n' "$1"
    sync
    poweroff -f
}
param() { sed -n "s/.*\\<$1=\\([^ ]*\\).*/\\1/p" /proc/cmdline; }
# shellcheck disable=SC2013 # one module file name a line, none has a space
for m in $(cat /lib/modules/load-order); do
    insmod "/lib/modules/$m" || say "insmod $m failed"
done
[ -c /dev/kvm ] || { say "no /dev/kvm after loading kvm-amd (is the L1 CPU model SVM-capable?)"; finish 125; }
share=$(param nested.share)
job=$(param nested.job)
modules=$(param nested.modules)
tmpsize=$(param nested.tmpsize)
repo=$(param nested.repo)
R=/newroot
# The host root (read-only 9p) under a tmpfs overlay: L1 may write anywhere
# (e.g. /lib/modules, /etc), the writes vanish with L1, the host is untouched.
mkdir -p /hostroot /overlay
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=loose,ro hostroot /hostroot ||
    { say "cannot mount the host root (9p tag hostroot)"; finish 125; }
mount -t tmpfs overlay /overlay
mkdir -p /overlay/upper /overlay/work
mount -t overlay -o lowerdir=/hostroot,upperdir=/overlay/upper,workdir=/overlay/work overlay $R ||
    { say "cannot mount the overlay on the host root"; finish 125; }
# The private tmpfs mounts below would hide a repository or module tree
# that lives under them (a checkout in /tmp, say): keep the overlay's view
# of both first and put it back on top afterwards.
mkdir -p /keep/repo /keep/modules
[ -n "$repo" ] && mount -o bind "$R$repo" /keep/repo
[ -n "$modules" ] && mount -o bind "$R$modules" /keep/modules
mount -t proc proc $R/proc
mount -t sysfs sys $R/sys
mount -o bind /dev $R/dev
mount -t devpts devpts $R/dev/pts 2>/dev/null
# shellcheck disable=SC2086 # param() values end at the first space
mount -t tmpfs -o size=${tmpsize:-4g} tmp $R/tmp
mount -t tmpfs run $R/run
mount -t tmpfs shm $R/dev/shm 2>/dev/null
mount -t tmpfs vartmp $R/var/tmp
if [ -n "$repo" ]; then
    mkdir -p "$R$repo" && mount -o bind /keep/repo "$R$repo"
fi
mkdir -p "$R$share"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share "$R$share" ||
    { say "cannot mount the scratch share at $share"; finish 125; }
if [ -n "$modules" ]; then
    mkdir -p $R/lib/modules && mount -o bind /keep/modules $R/lib/modules
fi
hostname securevm-l1
say "up after $(cut -d' ' -f1 /proc/uptime) s; /dev/kvm ready; running the job"
chroot $R /bin/bash "$job"
finish $?
