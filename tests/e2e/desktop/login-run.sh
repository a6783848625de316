#!/bin/sh
# desktop-login's run.sh on the `e2e` disk of the Debian desktop guest: the
# image's hook (tests/guest-init/desktop-e2e-hook.sh) runs it once alice's
# graphical session is on seat0. It reports what logind says of that
# session, then the hook powers the guest off.
session=$(loginctl list-sessions --no-legend | while read -r id _; do
    [ "$(loginctl show-session "$id" -p Class --value)" = user ] && echo "$id" && break
done)
echo "E2E-SESSION-TYPE=$(loginctl show-session "$session" -p Type --value)"
echo "E2E-SESSION-SEAT=$(loginctl show-session "$session" -p Seat --value)"
echo "E2E-SESSION-USER=$(loginctl show-session "$session" -p Name --value)"
# The hook powers the guest off when this script ends: the test first
# sees the session's desktop drawn (its window manager takes some seconds
# after the session starts; the guest was seen powering off before).
for _ in $(seq 60); do
    pgrep -x icewm >/dev/null && break
    sleep 1
done
sleep 20
