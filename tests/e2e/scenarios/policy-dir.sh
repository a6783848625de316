# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# policy-dir: `securevm run --policy-dir DIR`, without a control socket,
# takes the policies configuration management drops into DIR. A newer
# signed policy dropped the way Ansible's copy module drops files (each
# written under a temporary dot-name in DIR, then renamed; the signature
# first, the policy last) replaces the running guest's network rules (its
# transfer to the newly denied sink is cut); a rolled-back and a tampered
# policy dropped the same way are refused and audited; every file stays in
# DIR and the VM runs on until its guest powers off.
TIMEOUT=420
# shellcheck source=tests/e2e/api/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../api/lib.sh"

prepare() { api_prepare_transfers; }

# ansible_copy SRC NAME: SRC into $POLICY_DIR/NAME as Ansible's copy module
# writes it: a temporary file beside the destination, renamed over it.
ansible_copy() {
    local temporary
    temporary=$(mktemp "$POLICY_DIR/.ansible_tmpXXXXXX$2")
    cp "$1" "$temporary"
    mv "$temporary" "$POLICY_DIR/$2"
}

# drop_policy SRC NAME: the documented order, signature first.
drop_policy() {
    ansible_copy "$1.minisig" "$2.minisig"
    ansible_copy "$1" "$2"
}

# audited EVENT: how many records of EVENT the audit log holds.
audited() { grep -c "\"event\":\"$1\"" "$WORK/audit.jsonl" || true; }

# wait_audited EVENT COUNT: until the audit log holds COUNT records of
# EVENT; fails after 15 s or when securevm has stopped.
wait_audited() {
    local i
    for ((i = 0; i < 150; i++)); do
        [[ $(audited "$1") -ge $2 ]] && return 0
        kill -0 "$VMM_PID" 2>/dev/null || fail "securevm stopped while waiting for $1 record $2"
        sleep 0.1
    done
    fail "no $1 record number $2 in the audit log after 15 s: $(tail -n 3 "$WORK/audit.jsonl")"
}

run() {
    trap api_cleanup EXIT
    # DIR is local to L1 (tmpfs): $WORK may be a 9p share.
    POLICY_DIR=$(mktemp -d /tmp/securevm-policies.XXXXXX)
    net_up --sink 192.0.2.1:5001 --sink 192.0.2.1:5002
    printf '%s\n' "$NET_TESTER_PASSPHRASE" >"$WORK/tester.pass"
    audit_args
    {
        printf '### %s run ... --policy-dir %s (no control socket)\n' "$SECUREVM" "$POLICY_DIR"
    } >>"$SERIAL_LOG"
    VMM_ERR=$WORK/securevm.err
    VMM_T0=$(date +%s%3N)
    "$SECUREVM" run --kernel "$GUEST_KERNEL" --initrd "$BUSYBOX_INITRAMFS" \
        --cmdline "console=ttyS0 reboot=acpi panic=-1 $GUEST_QUIET" --memory 256 \
        --disk "$WORK/e2e" --net "tap=$NET_TAP,ip=$NET_GUEST_IP" \
        --policy "$WORK/policy-v1.toml" --policy-key "$WORK/org.pub" \
        --policy-state "$WORK/policy.state" --policy-dir "$POLICY_DIR" \
        --user tester --passphrase-file "$WORK/tester.pass" "${AUDIT_ARGS[@]}" \
        </dev/null >>"$SERIAL_LOG" 2>>"$VMM_ERR" &
    VMM_PID=$!
    wait_serial "E2E-STREAMS=started" 180
    sleep 8

    # The signature in place, the policy still under its temporary name:
    # nothing happens yet.
    ansible_copy "$WORK/policy-v2.toml.minisig" site.toml.minisig
    local staged
    staged=$(mktemp "$POLICY_DIR/.ansible_tmpXXXXXXsite.toml")
    cp "$WORK/policy-v2.toml" "$staged"
    sleep 2
    [[ $(audited policy-pushed) -eq 0 ]] || fail "a policy was pushed before site.toml arrived"
    mv "$staged" "$POLICY_DIR/site.toml"
    wait_audited policy-pushed 1
    grep -qx 'version=2' "$WORK/policy.state" ||
        fail "the state file does not record version 2: $(cat "$WORK/policy.state")"

    drop_policy "$WORK/policy-v1.toml" old.toml
    wait_audited policy-push-refused 1
    grep '"event":"policy-push-refused"' "$WORK/audit.jsonl" | grep -q 'old.toml: version 1 is not newer than version 2' ||
        fail "the rolled-back policy was refused for another reason: $(grep policy-push-refused "$WORK/audit.jsonl")"
    drop_policy "$WORK/tampered-v3.toml" tampered.toml
    wait_audited policy-push-refused 2
    grep '"event":"policy-push-refused"' "$WORK/audit.jsonl" | grep 'tampered.toml' | grep -q 'signature' ||
        fail "the tampered policy was refused for another reason: $(grep policy-push-refused "$WORK/audit.jsonl")"
    kill -0 "$VMM_PID" 2>/dev/null || fail "securevm stopped after the refusals"
    local name
    for name in site.toml site.toml.minisig old.toml old.toml.minisig tampered.toml tampered.toml.minisig; do
        [[ -f $POLICY_DIR/$name ]] || fail "$name was taken out of the directory"
    done

    api_wait_exit 240
    expect_exit 0
    wait_sinks 90
    local allowed denied
    allowed=$(sink_field 5001 bytes)
    denied=$(sink_field 5002 bytes)
    ((denied > 0)) || fail "the transfer to the sink denied later never ran"
    ((denied * 2 < allowed)) ||
        fail "the transfer to the denied sink did not stop: $denied bytes (allowed sink: $allowed)"
    expect_vmm_said "-> 192.0.2.1:5002 (cut"
    grep -qx 'version=2' "$WORK/policy.state" || fail "the state file moved off version 2"

    "$SECUREVM" audit verify --audit-key "$WORK/audit.key" "$WORK/audit.jsonl" >/dev/null ||
        fail "the audit log does not verify"
    [[ $(audited policy-pushed) -eq 1 ]] || fail "the applied policy is not audited once"
    [[ $(audited policy-push-refused) -eq 2 ]] || fail "the refusals are not audited once each"
    rm -rf "$POLICY_DIR"
}
