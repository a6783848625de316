# shellcheck shell=bash
# Helpers of the desktop scenarios (desktop-*), sourced by them on top of
# tests/e2e/lib.sh and tests/e2e/api/lib.sh: securevm runs the Debian desktop
# image (scripts/guest-assets debian-desktop) with --display and
# --api-socket in the background; the scenario logs in on securevm's own
# screen and then at the guest's LightDM greeter through VNC key events
# (tests/e2e/desktop/vnc.py on the VNC socket), takes screenshots with
# `securevm ctl screenshot`, and compares them with gvnccapture's (Debian's
# gvncviewer, a VNC client of its own) reaching the socket through socat.

DESKTOP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/e2e/api/lib.sh
source "$DESKTOP_DIR/../api/lib.sh"

# Debian's Python, which has python3-pil (TEST_PKGS), not one earlier in PATH.
DESKTOP_PYTHON=/usr/bin/python3
DESKTOP_WIDTH=1280
DESKTOP_HEIGHT=800
# The audit record of a clipboard transfer the role refuses.
# shellcheck disable=SC2034 # used by desktop-clipboard
CLIPBOARD_REFUSED_EVENT=clipboard-refused
# More colours than a text console or a uniform screen have.
GREETER_MIN_COLOURS=64
# Under nested TCG the Debian desktop reaches its greeter in minutes.
DESKTOP_GREETER_SECS=600
# One vCPU: with two, the desktop guest (or the L1 under it) crashed in the
# emulated-SVM L1 on most attempts (docs/testing.md, crashes of the nested
# L1); the display, input and clipboard need no second one, and SMP is
# covered by the console scenarios. E2E_DESKTOP_CPUS=2 runs them with two.
DESKTOP_CPUS=${E2E_DESKTOP_CPUS:-1}

# desktop_prepare: a copy of the desktop image's root shrunk like the
# console image's (debian_root_copy), and tests/e2e/desktop/policy.toml
# signed with a fresh minisign key.
desktop_prepare() {
    DEBIAN_ROOTFS=${DEBIAN_DESKTOP_ROOTFS:?scripts/guest-assets debian-desktop has not been built} \
        debian_root_copy "$WORK/desktop-root.img"
    cp "$DESKTOP_DIR/policy.toml" "$WORK/policy.toml"
    rm -f "$WORK/org.key" "$WORK/org.pub"
    minisign -G -W -p "$WORK/org.pub" -s "$WORK/org.key" >/dev/null
    minisign -S -s "$WORK/org.key" -m "$WORK/policy.toml" -t "securevm-policy version=1" >/dev/null
}

# desktop_start USER [ARG...]: the desktop guest under the policy, USER's
# login asked on the VNC screen (VNC_SOCKET), auditing into
# $WORK/audit.jsonl; e2e=1 starts the image's hook (desktop-e2e-hook.sh).
desktop_start() {
    local user=$1
    shift
    audit_args
    VNC_SOCKET=$(mktemp -d /tmp/securevm-vnc.XXXXXX)/vnc.sock
    api_start --kernel "$DEBIAN_DESKTOP_KERNEL" --initrd "$DEBIAN_DESKTOP_INITRD" \
        --cmdline "console=ttyS0 reboot=acpi panic=-1 root=/dev/vda rw $GUEST_QUIET e2e=1" \
        --cpus "$DESKTOP_CPUS" --memory 2048 --disk "$WORK/desktop-root.img" "$@" \
        --display "vnc=unix:$VNC_SOCKET,size=${DESKTOP_WIDTH}x$DESKTOP_HEIGHT" \
        --policy "$WORK/policy.toml" --policy-key "$WORK/org.pub" --user "$user" "${AUDIT_ARGS[@]}"
    local i
    for ((i = 0; i < 300; i++)); do
        [[ -S $VNC_SOCKET ]] && break
        kill -0 "$VMM_PID" 2>/dev/null || fail "securevm exited before creating the VNC socket: $(tail -n1 "$VMM_ERR")"
        sleep 0.1
    done
    [[ -S $VNC_SOCKET ]] || fail "securevm did not create the VNC socket $VNC_SOCKET within 30 s"
    [[ $(stat -c %a "$VNC_SOCKET") == 600 ]] || fail "the VNC socket has mode $(stat -c %a "$VNC_SOCKET"), not 600"
}

# desktop_cleanup: api_cleanup plus the socat of gvnc_capture (trap it).
desktop_cleanup() {
    [[ -z ${SOCAT_PID:-} ]] || kill "$SOCAT_PID" 2>/dev/null || true
    [[ -z ${CUT_TEXT_PID:-} ]] || kill "$CUT_TEXT_PID" 2>/dev/null || true
    api_cleanup
}

# vnc ARG...: tests/e2e/desktop/vnc.py on the scenario's VNC socket.
vnc() { "$DESKTOP_PYTHON" "$DESKTOP_DIR/vnc.py" "unix:$VNC_SOCKET" "$@"; }

# screenshot NAME: `ctl screenshot` into $WORK/NAME.png, which must be a PNG
# of the configured size; sets SHOT_COLOURS to its number of colours.
screenshot() {
    ctl screenshot "$WORK/$1.png" || fail "ctl screenshot: $CTL_OUT"
    local info
    info=$("$DESKTOP_PYTHON" "$DESKTOP_DIR/vnc.py" png-info "$WORK/$1.png") || fail "ctl screenshot wrote no PNG: $info"
    [[ $info == "${DESKTOP_WIDTH}x$DESKTOP_HEIGHT "* ]] ||
        fail "the screenshot $1.png is $info, not ${DESKTOP_WIDTH}x$DESKTOP_HEIGHT"
    # shellcheck disable=SC2034 # read by the scenarios
    SHOT_COLOURS=${info##*colours=}
}

# vnc_screenshot NAME: $WORK/NAME.png captured through VNC (vnc.py), with
# its colour count in SHOT_COLOURS: for securevm's own screens, shown before
# the control socket exists (it comes up with the guest).
vnc_screenshot() {
    local info
    info=$(vnc capture "$WORK/$1.png") || fail "capturing $1 through VNC failed: $info"
    [[ $info == "${DESKTOP_WIDTH}x$DESKTOP_HEIGHT "* ]] ||
        fail "the VNC capture $1.png is $info, not ${DESKTOP_WIDTH}x$DESKTOP_HEIGHT"
    # shellcheck disable=SC2034 # read by the scenarios
    SHOT_COLOURS=${info##*colours=}
}

# png_diff A B: the fraction of pixels that differ between two PNGs.
png_diff() { "$DESKTOP_PYTHON" "$DESKTOP_DIR/vnc.py" png-diff "$1" "$2"; }

# differs FRACTION: FRACTION (from png_diff) is more than 1% of the screen.
differs() { awk -v f="$1" 'BEGIN { exit !(f > 0.01) }'; }

# securevm_login PASSPHRASE: type the passphrase of --user on securevm's
# login screen through VNC key events.
securevm_login() {
    vnc type "$1" || fail "typing the passphrase through VNC failed"
    vnc key Return || fail "pressing Return through VNC failed"
}

# wait_greeter NAME: after the guest printed the greeter marker, poll
# screenshots (NAME-N.png) until two in a row 3 s apart are equal (the
# greeter has drawn itself; its caret blinks in less than 1% of the screen),
# have more colours than a text console (X shows a uniform screen for up to
# 20 s before the greeter draws; LightDM's GTK greeter has about 2000) and
# differ from $WORK/NAME-before.png; fails after 120 s.
wait_greeter() {
    local name=$1 i prev='' diff
    wait_serial "SECUREVM-E2E: greeter on seat0" "$DESKTOP_GREETER_SECS"
    for ((i = 0; i < 40; i++)); do
        screenshot "$name-$i"
        if [[ -n $prev ]]; then
            diff=$(png_diff "$WORK/$prev.png" "$WORK/$name-$i.png")
            if ! differs "$diff" && ((SHOT_COLOURS > GREETER_MIN_COLOURS)) &&
                differs "$(png_diff "$WORK/$name-before.png" "$WORK/$name-$i.png")"; then
                cp "$WORK/$name-$i.png" "$WORK/$name.png"
                return 0
            fi
        fi
        prev=$name-$i
        sleep 3
    done
    fail "the screen did not settle on a new picture within 120 s of the greeter's start"
}

# wait_session NAME: after the session marker, poll screenshots (NAME-N.png)
# until one has more colours than a uniform or console screen and differs
# from $WORK/greeter.png (the session's window manager has drawn its
# desktop); fails after 120 s.
wait_session() {
    local name=$1 i
    for ((i = 0; i < 40; i++)); do
        screenshot "$name-$i"
        if ((SHOT_COLOURS > 1)) && differs "$(png_diff "$WORK/greeter.png" "$WORK/$name-$i.png")"; then
            cp "$WORK/$name-$i.png" "$WORK/$name.png"
            return 0
        fi
        sleep 3
    done
    fail "the session drew no desktop (a screen of more than one colour, unlike the greeter's) within 120 s of its start"
}

# gvnc_capture OUT.png: gvnccapture (a VNC client of its own) through socat
# from TCP 127.0.0.1:5931 (VNC display :31) to the VNC socket.
gvnc_capture() {
    # L1's init leaves the loopback interface down.
    ip link set lo up
    socat TCP-LISTEN:5931,bind=127.0.0.1,reuseaddr,fork "UNIX-CONNECT:$VNC_SOCKET" &
    SOCAT_PID=$!
    local i
    for ((i = 0; i < 50; i++)); do
        ss -ltn 2>/dev/null | grep -q '127.0.0.1:5931 ' && break
        sleep 0.1
    done
    timeout 60 gvnccapture 127.0.0.1:31 "$1" >"$WORK/gvnccapture.log" 2>&1 ||
        fail "gvnccapture failed: $(tail -n1 "$WORK/gvnccapture.log")"
    kill "$SOCAT_PID" 2>/dev/null || true
    wait "$SOCAT_PID" 2>/dev/null || true
    SOCAT_PID=
}

# greeter_login: the image's user and password typed at LightDM's greeter
# (it asks for the name, then the password) through VNC key events.
greeter_login() {
    vnc type "${DEBIAN_DESKTOP_USER:?}" || fail "typing the user name through VNC failed"
    vnc key Return || fail "pressing Return through VNC failed"
    sleep 2
    vnc type "${DEBIAN_DESKTOP_PASSWORD:?}" || fail "typing the password through VNC failed"
    vnc key Return || fail "pressing Return through VNC failed"
}
