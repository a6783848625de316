# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# desktop-login: with --display, securevm's own login is on the VNC view
# before the guest starts; the test logs in through VNC key events; the
# Debian desktop guest boots to LightDM's greeter: `ctl screenshot` gives a
# PNG of the configured size that is not uniform and changes when the
# greeter appears; gvnccapture (another VNC client, through socat) captures
# the same screen; the image's user and password typed through VNC log in,
# and the guest reports alice's graphical session on seat0 (loginctl).
TIMEOUT=1500
# The desktop guests crash or freeze the nested L1 in many more attempts
# than the console guests (docs/testing.md); a crash costs a minute or two.
RETRIES=5
# shellcheck source=tests/e2e/desktop/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../desktop/lib.sh"

prepare() {
    desktop_prepare
    make_script_disk "$WORK/e2e" "$DESKTOP_DIR/login-run.sh"
}

run() {
    trap desktop_cleanup EXIT
    desktop_start alice --disk "$WORK/e2e"
    sleep 2
    vnc_screenshot securevm-login
    ((SHOT_COLOURS > 1)) || fail "securevm's login screen is uniform (one colour)"
    # Nothing of the guest yet: the serial log holds only the command line.
    ! grep -qv '^###' "$SERIAL_LOG" || fail "the guest printed on its console before the login: $(grep -v '^###' "$SERIAL_LOG" | head -n1)"
    securevm_login "$ID_ALICE_PASSPHRASE"
    wait_serial "SECUREVM-E2E: debian-desktop" "$DESKTOP_GREETER_SECS"
    cp "$WORK/securevm-login.png" "$WORK/greeter-before.png"
    wait_greeter greeter
    ((SHOT_COLOURS > 1)) || fail "the greeter's screen is uniform"
    gvnc_capture "$WORK/gvnccapture.png"
    screenshot greeter-again
    local diff
    diff=$(png_diff "$WORK/gvnccapture.png" "$WORK/greeter-again.png") || fail "comparing the captures: $diff"
    ! differs "$diff" || fail "gvnccapture's picture differs from ctl screenshot's in $diff of the pixels"
    greeter_login
    wait_serial "SECUREVM-E2E: graphical session on seat0 for ${DEBIAN_DESKTOP_USER:?}" 300
    wait_session session
    wait_serial "SECUREVM-E2E: exit=" 120
    api_wait_exit 120
    expect_exit 0
    [[ $(serial_value E2E-SESSION-TYPE) == x11 ]] || fail "alice's session has type '$(serial_value E2E-SESSION-TYPE)', not x11"
    [[ $(serial_value E2E-SESSION-SEAT) == seat0 ]] || fail "alice's session is on seat '$(serial_value E2E-SESSION-SEAT)'"
    [[ $(serial_value E2E-SESSION-USER) == "$DEBIAN_DESKTOP_USER" ]] || fail "the session's user is '$(serial_value E2E-SESSION-USER)'"
    expect_serial "SECUREVM-E2E: exit=0"
}
