# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# net-hostile-frames: frames the guest's own stack never sends, written
# raw by tests/e2e/net/hostile-sender.c in the busybox guest: UDP first
# fragments shorter than the UDP header, ICMP errors quoting a live flow
# but sent to another host, MLD and router/neighbour solicitations from
# the link-local address to a global one, tags, tunnels, spoofed
# addresses, source routes, lengths that lie, odd fragments. Each carries
# a marker HOSTILE-NN, and tcpdump on the TAP (frames securevm writes)
# must see none of them. The short fragments are also sent from L1 towards
# the guest. An allowed datagram the guest sends after all of that still
# reaches the peer, and the guest powers off normally: the VM survived.
TIMEOUT=300
# The address L1 adds to the TAP once its frames are sent (the guest waits
# for it with arping before its last datagram).
HOSTILE_GATE=192.0.2.4

prepare() {
    gcc -static -O2 -Wall -Wextra -Werror -o "$WORK/hostile-sender" "$E2E_DIR/net/hostile-sender.c"
    net_sign_policy "$E2E_DIR/net/hostile-policy.toml"
    printf '%s/24\n' "$NET_GUEST_IP" >"$WORK/guest-ip"
    cp "$E2E_DIR/net/steps/hostile-frames" "$WORK/steps"
    make_script_disk "$WORK/e2e" "$(guest_script net-check.sh)" "$WORK/guest-ip" "$WORK/steps" \
        "$WORK/hostile-sender"
}

# send_inbound: once the guest has written its frames, the short
# fragments from L1 towards the guest, then the gate address.
send_inbound() {
    local i
    for i in $(seq 500); do
        [[ -e $SERIAL_LOG && $(serial_value E2E-HOSTILE-OUTBOUND) == "done" ]] && break
        sleep 0.5
    done
    "$WORK/hostile-sender" inbound "$NET_TAP" "$(serial_value E2E-GUEST-MAC)" >"$WORK/inbound.log" 2>&1 || true
    ip addr add "$HOSTILE_GATE/24" dev "$NET_TAP"
}

hostile_down() {
    [[ -z ${INBOUND_PID:-} ]] || kill "$INBOUND_PID" 2>/dev/null || true
    captures_stop
    [[ -z ${PEER_PID:-} ]] || net_down
}

# hostile_run: the busybox guest with an IPv4 and an IPv6 address, as the
# policy's user `tester`.
hostile_run() {
    printf '%s\n' "$NET_TESTER_PASSPHRASE" >"$WORK/tester.pass"
    audit_args
    vmm_run 240 --kernel "$GUEST_KERNEL" --initrd "$BUSYBOX_INITRAMFS" \
        --cmdline "console=ttyS0 reboot=acpi panic=-1 $GUEST_QUIET" --memory 256 \
        --disk "$WORK/e2e" --net "tap=$NET_TAP,ip=$NET_GUEST_IP,ip=2001:db8::10" \
        --policy "$WORK/policy.toml" --policy-key "$WORK/org.pub" \
        --user tester --passphrase-file "$WORK/tester.pass" "${AUDIT_ARGS[@]}"
}

# leaked_markers PCAP: each HOSTILE-NN marker found in PCAP, with what its
# frame is.
leaked_markers() {
    grep -aoE 'HOSTILE-[0-9]{2}' "$1" | sort -u | while read -r marker; do
        "$WORK/hostile-sender" list | sed -n "s/^$marker outbound \\(.*\\)/$marker (\\1)/p"
    done
}

run() {
    CAPTURES=()
    trap hostile_down EXIT
    net_up --udp 192.0.2.1:7000
    # Only what securevm writes to the TAP, not what L1 sends the guest.
    capture_start tap "$NET_TAP" -Q in
    send_inbound &
    INBOUND_PID=$!
    hostile_run
    kill "$INBOUND_PID" 2>/dev/null || true
    wait "$INBOUND_PID" 2>/dev/null || true
    INBOUND_PID=
    captures_stop
    hostile_verdict
}

# hostile_verdict: every problem of the run at once (a run against an
# unfixed filter shows all it lets through), or none.
hostile_verdict() {
    local problems=() leaked='' expected_out expected_in marker sent panic
    expected_out=$("$WORK/hostile-sender" list | grep -c ' outbound ')
    expected_in=$("$WORK/hostile-sender" list | grep -c ' inbound ')
    panic=$(grep -aoE "panicked at [^ ]*[0-9]" "$SERIAL_LOG" | head -n1 || true)
    [[ $VMM_EXIT -eq 0 ]] ||
        problems+=("securevm exited $VMM_EXIT, expected 0 (${panic:-$(vmm_exit_meaning "$VMM_EXIT")})")
    [[ $(serial_value E2E-PEER-MAC) =~ ^[0-9a-fA-F:]{17}$ ]] ||
        problems+=("the guest did not learn the peer's MAC")
    sent=$(serial_value E2E-HOSTILE-SENT)
    [[ $sent == "$expected_out" ]] ||
        problems+=("the guest wrote ${sent:-no report of} its $expected_out hostile frames")
    for marker in E2E-FLOW-V4 E2E-FLOW-V6 E2E-FRAG-V4; do
        grep -qaF "$marker" tap.pcap ||
            problems+=("the allowed frame $marker is not on the TAP (the capture or the sender is broken)")
    done
    while IFS= read -r marker; do
        [[ -z $marker ]] || leaked+=${leaked:+, }$marker
    done <<<"$(leaked_markers tap.pcap)"
    [[ -z $leaked ]] || problems+=("on the TAP: $leaked")
    grep -qx "E2E-INBOUND-SENT=$expected_in" inbound.log 2>/dev/null ||
        problems+=("L1 did not send its $expected_in frames towards the guest: $(tail -n1 inbound.log 2>/dev/null || echo "nothing sent")")
    [[ $(serial_value E2E-INBOUND-GATE) == open ]] ||
        problems+=("the guest never saw L1's gate address after the inbound frames")
    grep -aF ALIVE-AFTER-HOSTILE "$PEER_LOG" | grep -qF "udp 192.0.2.1:7000 from $NET_GUEST_IP:" ||
        problems+=("the allowed datagram sent after the hostile frames never reached the peer")
    [[ ${#problems[@]} -eq 0 ]] || fail "$(printf '%s; ' "${problems[@]}" | sed 's/; $//')"
}
