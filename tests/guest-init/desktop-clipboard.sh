#!/bin/sh
# What: /usr/local/bin/securevm-clipboard in the Debian desktop guest image
# (scripts/guest-assets target debian-desktop; its hash is part of that
# target's cache key). Who runs it: root in the guest: the desktop e2e hook
# (desktop-e2e-hook.sh), the run.sh of a test's `e2e` disk, or a person on
# the serial console. Why: the clipboard tests need "copy this text" and
# "what is on the clipboard" done by the user logged in on the screen, in
# their X session, where spice-vdagent carries the clipboard to securevm.
#
# Usage: securevm-clipboard wait-session SECONDS   print the user of the
#            first graphical (x11/wayland, class user) session on seat0
#        securevm-clipboard wait-greeter SECONDS   exit 0 once the greeter's
#            graphical session is on seat0
#        securevm-clipboard set TEXT              own the clipboard with TEXT
#        securevm-clipboard get                   print the clipboard
#        securevm-clipboard wait TEXT SECONDS     exit 0 once the clipboard
#            holds TEXT, 1 if it did not within SECONDS
set -u

# graphical_session [CLASS]: "ID USER DISPLAY" of the first graphical session
# on seat0 of CLASS (default "user"; LightDM's greeter runs in one of class
# "greeter"), or nothing.
graphical_session() {
    want=${1:-user}
    loginctl list-sessions --no-legend 2>/dev/null | while read -r id _; do
        props=$(loginctl show-session "$id" -p Type -p Seat -p Class -p Name -p Display -p State 2>/dev/null)
        type=$(echo "$props" | sed -n 's/^Type=//p')
        seat=$(echo "$props" | sed -n 's/^Seat=//p')
        class=$(echo "$props" | sed -n 's/^Class=//p')
        state=$(echo "$props" | sed -n 's/^State=//p')
        case $type in x11 | wayland) ;; *) continue ;; esac
        if [ "$seat" = seat0 ] && [ "$class" = "$want" ] && [ "$state" != closing ]; then
            echo "$id $(echo "$props" | sed -n 's/^Name=//p') $(echo "$props" | sed -n 's/^Display=//p')"
            break
        fi
    done
}

# as_session_user CMD...: run CMD as the session's user with its X display.
as_session_user() {
    session=$(graphical_session)
    [ -n "$session" ] || { echo "securevm-clipboard: no graphical session on seat0" >&2; return 1; }
    set -- "$session" "$@"
    user=$(echo "$1" | cut -d' ' -f2)
    display=$(echo "$1" | cut -d' ' -f3)
    shift
    home=$(getent passwd "$user" | cut -d: -f6)
    runuser -u "$user" -- env DISPLAY="${display:-:0}" XAUTHORITY="$home/.Xauthority" "$@"
}

case ${1:-} in
wait-session | wait-greeter)
    class=user
    [ "$1" = wait-greeter ] && class=greeter
    deadline=$(($(cut -d. -f1 /proc/uptime) + ${2:?seconds}))
    while [ "$(cut -d. -f1 /proc/uptime)" -lt "$deadline" ]; do
        session=$(graphical_session "$class")
        [ -n "$session" ] && { echo "$session" | cut -d' ' -f2; exit 0; }
        sleep 1
    done
    exit 1
    ;;
set)
    # xclip stays in the background as the selection's owner until another
    # client takes it: its output must not hold the caller's pipe open.
    printf '%s' "${2?text}" | as_session_user xclip -selection clipboard -i >/dev/null 2>&1
    ;;
get)
    as_session_user xclip -selection clipboard -o 2>/dev/null
    ;;
wait)
    deadline=$(($(cut -d. -f1 /proc/uptime) + ${3:?seconds}))
    while [ "$(cut -d. -f1 /proc/uptime)" -lt "$deadline" ]; do
        [ "$(as_session_user xclip -selection clipboard -o 2>/dev/null)" = "${2?text}" ] && exit 0
        sleep 1
    done
    exit 1
    ;;
*)
    echo "usage: securevm-clipboard wait-session SECONDS | wait-greeter SECONDS | set TEXT | get | wait TEXT SECONDS" >&2
    exit 2
    ;;
esac
