# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# id-passphrase: alice logs in with her passphrase (file), her role applies,
# and the same passphrase opens the encrypted e2e disk through the keyslot
# enrolled for her (no second prompt); bob, who has no slot, gets no disk.
TIMEOUT=420

prepare() {
    id_prepare
    make_script_disk "$WORK/plain.img" "$(guest_script id-check.sh)"
    printf 'the admin passphrase\n' >"$WORK/admin.pass"
    # 512-byte sectors: the script disk's ext4 has 1 KiB blocks.
    "$SECUREVM" disk create --from "$WORK/plain.img" --sector-size 512 --passphrase-file "$WORK/admin.pass" \
        --kdf-memory 1M --kdf-time 4 "$WORK/e2e" 2>/dev/null
    rm -f "$WORK/plain.img"
    "$SECUREVM" disk enroll --user alice --policy "$WORK/policy.toml" --policy-key "$WORK/org.pub" \
        --passphrase-file "$WORK/admin.pass" --user-passphrase-file "$WORK/alice.pass" \
        --kdf-memory 1M --kdf-time 4 "$WORK/e2e" 2>/dev/null >"$WORK/enroll.out"
    grep -q "enrolled user alice in keyslot 1 of" "$WORK/enroll.out"
}

run() {
    # libcryptsetup reads headers with direct I/O, which the 9p share
    # holding $WORK does not offer: the volume goes to L1's tmpfs (its name
    # stays e2e, the serial the guest looks for).
    ID_DISK=$(mktemp -d)/e2e
    cp "$WORK/e2e" "$ID_DISK"
    id_run 240 alice "$WORK/alice.pass"
    expect_exit 0
    expect_serial "E2E-ID-RUN=ok"
    grep '"event":"disk-opened"' "$WORK/audit.jsonl" | grep '"keyslot":1,' >/dev/null ||
        fail "the audit log does not show the disk opened through keyslot 1"
    grep '"event":"disk-opened"' "$WORK/audit.jsonl" | grep '"user":"alice"' | grep '"user_slot":true' >/dev/null ||
        fail "the disk was not opened through alice's own slot"
    grep '"event":"role-selected"' "$WORK/audit.jsonl" | grep '"role":"office"' >/dev/null ||
        fail "alice's role (office) was not selected"
    audit_verify "$WORK/audit.jsonl"
    [[ $AUDIT_EXIT -eq 0 ]] || fail "the audit log does not verify: $AUDIT_OUT"

    local before
    before=$(grep -c "E2E-ID-RUN=ok" "$SERIAL_LOG")
    id_run 240 bob "$WORK/bob.pass"
    expect_exit 1
    expect_serial "has no keyslot for user 'bob'"
    [[ $(grep -c "E2E-ID-RUN=ok" "$SERIAL_LOG") -eq $before ]] || fail "bob's session ran the guest"
}
