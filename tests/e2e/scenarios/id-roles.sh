# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# id-roles: two users of one policy get their own role's rules in the same
# guest: alice (office) reaches port 8080 but not 9090 and sees the stick
# read-only; bob (visitor) reaches 9090 but not 8080 and gets no stick.
TIMEOUT=420

prepare() {
    id_prepare
    local content
    content=$(mktemp -d)
    echo id-roles-medium >"$content/marker.txt"
    mkfs.ext4 -q -F -L stick -d "$content" "$WORK/stick.img" 32M
    rm -rf "$content"
    printf '%s/24\n' "$NET_GUEST_IP" >"$WORK/guest-ip"
    printf 'tcp OFFICE 192.0.2.1 8080\ntcp PORTAL 192.0.2.1 9090\n' >"$WORK/steps"
    touch "$WORK/mount-read"
    make_script_disk "$WORK/e2e" "$(guest_script id-check.sh)" "$(guest_script net-check.sh)" \
        "$WORK/guest-ip" "$WORK/steps" "$(guest_script external-check.sh)" \
        "$(guest_script disk-by-serial.sh)" "$WORK/mount-read"
}

# as_user USER: boot as USER; console in $WORK/serial-USER.log (and serial.log).
as_user() {
    local main=$SERIAL_LOG
    SERIAL_LOG=$WORK/serial-$1.log
    id_run 240 "$1" "$WORK/$1.pass" --net "tap=$NET_TAP,ip=$NET_GUEST_IP" \
        --external "$WORK/stick.img"
    SERIAL_LOG=$main
    cat "$WORK/serial-$1.log" >>"$SERIAL_LOG"
}

# seen USER KEY: the value USER's guest printed for KEY.
seen() { SERIAL_LOG=$WORK/serial-$1.log serial_value "$2"; }

# network USER: USER's connection results and securevm's network messages,
# on one line, for a failure's reason.
network() {
    tr -d '\r' <"$WORK/serial-$1.log" | grep -E 'E2E-TCP|E2E-NET|securevm: network' | tr '\n' '|'
}

run() {
    local before after
    before=$(sha256sum <"$WORK/stick.img")
    net_up --tcp 192.0.2.1:8080 --tcp 192.0.2.1:9090
    as_user alice
    local alice_exit=$VMM_EXIT
    as_user bob
    local bob_exit=$VMM_EXIT
    net_down
    after=$(sha256sum <"$WORK/stick.img")
    [[ $alice_exit -eq 0 && $bob_exit -eq 0 ]] || fail "securevm exited $alice_exit (alice) and $bob_exit (bob)"
    [[ $(seen alice E2E-TCP-OFFICE) == ok ]] || fail "alice could not reach 8080: $(network alice)"
    [[ $(seen alice E2E-TCP-PORTAL) == fail ]] || fail "alice reached 9090: $(network alice)"
    [[ $(seen alice E2E-STICK) == present ]] || fail "alice's guest has no stick"
    [[ $(seen alice E2E-STICK-RO) == 1 ]] || fail "alice's stick is not read-only"
    [[ $(seen alice E2E-MOUNT-READ) == id-roles-medium ]] || fail "alice could not read the stick"
    [[ $(seen bob E2E-TCP-OFFICE) == fail ]] || fail "bob reached 8080: $(network bob)"
    [[ $(seen bob E2E-TCP-PORTAL) == ok ]] || fail "bob could not reach 9090: $(network bob)"
    [[ $(seen bob E2E-STICK) == absent ]] || fail "bob's guest sees the stick"
    grep -q "external medium $WORK/stick.img not attached" "$WORK/serial-bob.log" ||
        fail "the stick's refusal for bob was not reported"
    [[ $before == "$after" ]] || fail "the stick changed on the host"
    grep '"event":"external-medium"' "$WORK/audit.jsonl" | grep '"user":"alice"' | grep '"decision":"read-only"' >/dev/null ||
        fail "alice's read-only medium is not audited"
    grep '"event":"external-medium"' "$WORK/audit.jsonl" | grep '"user":"bob"' | grep '"decision":"deny"' >/dev/null ||
        fail "bob's denied medium is not audited"
    grep '"event":"network-refusals"' "$WORK/audit.jsonl" | grep '"user":"bob"' >/dev/null ||
        fail "bob's network refusals are not audited"
    audit_verify "$WORK/audit.jsonl"
    [[ $AUDIT_EXIT -eq 0 ]] || fail "the audit log does not verify: $AUDIT_OUT"
}
