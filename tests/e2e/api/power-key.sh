#!/bin/sh
# Runs inside the Debian guest (api-shutdown): waits for the ACPI power
# button's input device, arms a unit whose stop prints a marker (systemd
# stops it only in an orderly shutdown), then waits for the power key and
# starts poweroff.target, as systemd-logind or acpid do on a desktop. (The
# minimal test image has no D-Bus, which logind needs to act on the key.)
dev=
i=0
while [ -z "$dev" ] && [ $i -lt 60 ]; do
    for d in /sys/class/input/event*; do
        [ "$(cat "$d/device/name" 2>/dev/null)" = "Power Button" ] && dev=/dev/input/${d##*/}
    done
    [ -n "$dev" ] || sleep 0.5
    i=$((i + 1))
done
[ -n "$dev" ] || { echo "E2E-POWER-BUTTON=missing"; exit 1; }
echo "E2E-POWER-BUTTON-DEVICE=$dev phys=$(cat "/sys/class/input/${dev##*/}/device/phys" 2>/dev/null)"
cat >/run/systemd/system/e2e-clean-stop.service <<'UNIT'
[Unit]
Description=Marks an orderly shutdown on the console
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
ExecStop=/bin/sh -c 'echo "SECUREVM-E2E: clean-stop" >/dev/ttyS0'
UNIT
systemctl daemon-reload
systemctl start e2e-clean-stop.service
echo "E2E-LOGIND=$(systemctl is-active systemd-logind.service)"
echo "E2E-POWER-BUTTON=ready"
dd if="$dev" of=/dev/null bs=24 count=1 2>/dev/null
echo "E2E-POWER-KEY=pressed"
systemctl start --no-block --job-mode=replace-irreversibly poweroff.target
sleep 600
