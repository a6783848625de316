# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# net-vpn: a role that forces a WireGuard VPN. The peer is the Linux
# kernel's WireGuard (configured with `wg`) in a network namespace of L1,
# behind a veth pair (the "outer link"), serving 203.0.113.1 only inside
# the tunnel. With the right keys the guest reaches it through the tunnel,
# and captures show that the outer link carries only WireGuard messages
# and the TAP nothing for the tunnel network. With a wrong peer key the
# handshake fails, securevm reports it, and nothing leaves in clear.
TIMEOUT=420
VPN_NS=svmvpn
VPN_OUTER=svmwg0

prepare() {
    local k
    for k in vpn peer wrong; do
        wg genkey >"$WORK/$k.key"
        chmod 600 "$WORK/$k.key"
    done
    sed -e "s|@PEER_PUBLIC_KEY@|$(wg pubkey <"$WORK/peer.key")|" \
        -e "s|@WRONG_PUBLIC_KEY@|$(wg pubkey <"$WORK/wrong.key")|" \
        "$E2E_DIR/net/vpn-policy.toml" >"$WORK/policy.toml"
    rm -f "$WORK/org.key" "$WORK/org.pub"
    minisign -G -W -p "$WORK/org.pub" -s "$WORK/org.key" >/dev/null
    minisign -S -s "$WORK/org.key" -m "$WORK/policy.toml" -t "securevm-policy version=1" >/dev/null
    printf '%s/24\n' "$NET_GUEST_IP" >"$WORK/guest-ip"
    cp "$E2E_DIR/net/steps/vpn" "$WORK/steps"
    make_script_disk "$WORK/e2e" "$(guest_script net-check.sh)" "$WORK/guest-ip" "$WORK/steps"
}

# vpn_peer_up: the namespace with the kernel WireGuard peer and its service.
vpn_peer_up() {
    # L1 loads no module on demand.
    modprobe veth || fail "cannot load the veth module in L1"
    modprobe wireguard || fail "cannot load the wireguard module in L1"
    ip netns add "$VPN_NS"
    ip link add "$VPN_OUTER" type veth peer name wgout
    ip link set wgout netns "$VPN_NS"
    # No IPv6 on the outer link: its router and neighbour chatter would
    # blur the capture.
    echo 1 >"/proc/sys/net/ipv6/conf/$VPN_OUTER/disable_ipv6"
    ip addr add 198.51.100.1/24 dev "$VPN_OUTER"
    ip link set "$VPN_OUTER" up
    ip netns exec "$VPN_NS" sh -c 'echo 1 >/proc/sys/net/ipv6/conf/wgout/disable_ipv6'
    ip -n "$VPN_NS" link set lo up
    ip -n "$VPN_NS" addr add 198.51.100.2/24 dev wgout
    ip -n "$VPN_NS" link set wgout up
    ip -n "$VPN_NS" link add wg0 type wireguard
    ip netns exec "$VPN_NS" wg set wg0 listen-port 51820 private-key "$WORK/peer.key"
    vpn_peer_reset
    ip -n "$VPN_NS" addr add 203.0.113.1/24 dev wg0
    ip -n "$VPN_NS" link set wg0 up
    VPN_PEER_LOG=$WORK/vpn-peer.log
    : >"$VPN_PEER_LOG"
    ip netns exec "$VPN_NS" python3 "$E2E_DIR/net/peer.py" --log "$VPN_PEER_LOG" \
        --tcp 203.0.113.1:8443 --tcp 203.0.113.1:9090 &
    VPN_PEER_PID=$!
    local i
    for i in $(seq 50); do
        grep -q "peer ready" "$VPN_PEER_LOG" && return 0
        sleep 0.2
    done
    fail "the service behind the tunnel did not start"
}

# vpn_peer_reset: the peer knows securevm's public key, and nothing else
# about it yet (no session, no endpoint, so it sends nothing on its own).
vpn_peer_reset() {
    local ours
    ours=$(wg pubkey <"$WORK/vpn.key")
    ip netns exec "$VPN_NS" wg set wg0 peer "$ours" remove
    ip netns exec "$VPN_NS" wg set wg0 peer "$ours" allowed-ips 203.0.113.10/32
}

vpn_down() {
    captures_stop
    kill "${VPN_PEER_PID:-}" 2>/dev/null || true
    wait "${VPN_PEER_PID:-}" 2>/dev/null || true
    ip netns del "$VPN_NS" 2>/dev/null || true
    ip link del "$VPN_OUTER" 2>/dev/null || true
    [[ -z ${PEER_PID:-} ]] || net_down
    ip link del "$NET_TAP" 2>/dev/null || true
}

# vpn_run USER: boot the busybox guest with its tunnel address, logged in
# as USER (tester: role vpnuser; mistaken: role vpnwrongkey).
vpn_run() {
    printf '%s\n' "$NET_TESTER_PASSPHRASE" >"$WORK/tester.pass"
    audit_args
    vmm_run 240 --kernel "$GUEST_KERNEL" --initrd "$BUSYBOX_INITRAMFS" \
        --cmdline "console=ttyS0 reboot=acpi panic=-1 $GUEST_QUIET" --memory 256 \
        --disk "$WORK/e2e" --net "tap=$NET_TAP,ip=$NET_GUEST_IP,ip=203.0.113.10" \
        --policy "$WORK/policy.toml" --policy-key "$WORK/org.pub" \
        --user "$1" --passphrase-file "$WORK/tester.pass" "${AUDIT_ARGS[@]}" \
        --vpn-key "$WORK/vpn.key"
}

# no_clear_marker PCAP: neither the guest's request to the service behind
# the tunnel nor its answer (the port is unique to it) appears anywhere in
# PCAP's bytes.
no_clear_marker() {
    ! grep -qaE 'E2E-VPN-SECRET|E2E-TCP-OK 8443' "$1"
}

run() {
    CAPTURES=()
    trap vpn_down EXIT
    net_up --tcp 192.0.2.1:8080
    vpn_peer_up

    # The right keys: the service behind the tunnel answers.
    capture_start outer "$VPN_OUTER"
    capture_start tap "$NET_TAP"
    vpn_run tester
    captures_stop
    expect_exit 0
    [[ $(serial_value E2E-TCP-VPN) == ok ]] || fail "203.0.113.1:8443 was not reachable through the tunnel"
    grep -qF "tcp 203.0.113.1:8443 from 203.0.113.10" "$VPN_PEER_LOG" ||
        fail "the service behind the tunnel never saw the guest's tunnel address"
    [[ $(serial_value E2E-TCP-VPN-DENIED) == fail ]] || fail "the filter's rules did not apply inside the tunnel"
    ! grep -qF "203.0.113.1:9090" "$VPN_PEER_LOG" || fail "a connection the rules deny went through the tunnel"
    expect_serial "203.0.113.1:9090"
    [[ $(serial_value E2E-TCP-CLEAR) == ok ]] || fail "the service outside the tunnel stopped working"
    expect_serial "vpn: WireGuard tunnel to 198.51.100.2:51820 is up"
    [[ $(packets outer.pcap 'udp port 51820') -gt 0 ]] || fail "no WireGuard packets on the outer link"
    [[ $(packets outer.pcap 'ip and not udp port 51820') -eq 0 ]] ||
        fail "the outer link carried IP packets other than WireGuard's: $(tcpdump -r outer.pcap -n 'ip and not udp port 51820' 2>/dev/null | head -n3)"
    [[ $(packets outer.pcap 'udp port 51820 and not (udp[8] >= 1 and udp[8] <= 4 and udp[9:2] = 0 and udp[11] = 0)') -eq 0 ]] ||
        fail "UDP on the WireGuard port that is not a WireGuard message"
    [[ $(packets outer.pcap 'udp[8] = 4') -gt 0 ]] || fail "no WireGuard data messages on the outer link"
    no_clear_marker outer.pcap || fail "the guest's request or its answer crossed the outer link in clear"
    # (ARP for the gateway may name the tunnel address as its sender: it
    # is the guest asking for its gateway, not traffic for the tunnel.)
    [[ $(packets tap.pcap 'ip and net 203.0.113.0/24') -eq 0 ]] ||
        fail "packets for the tunnel network appeared on the TAP in clear"
    no_clear_marker tap.pcap || fail "the guest's request or its answer crossed the TAP in clear"
    [[ $(packets tap.pcap 'tcp port 8080') -gt 0 ]] || fail "the TAP capture saw nothing (it would prove nothing)"
    mv "$SERIAL_LOG" "$WORK/serial-right-key.log"

    # A wrong peer key: no session, the failure is reported, nothing leaks.
    vpn_peer_reset
    capture_start outer-wrong "$VPN_OUTER"
    capture_start tap-wrong "$NET_TAP"
    vpn_run mistaken
    captures_stop
    expect_exit 0
    [[ $(serial_value E2E-TCP-VPN) == fail ]] || fail "the tunnel service was reachable with a wrong peer key"
    [[ $(serial_value E2E-TCP-CLEAR) == ok ]] || fail "the service outside the tunnel stopped working"
    expect_serial "vpn: WireGuard handshake with 198.51.100.2:51820 unanswered"
    [[ $(packets outer-wrong.pcap 'udp and dst port 51820 and udp[8] = 1') -gt 0 ]] ||
        fail "securevm never tried the handshake"
    [[ $(packets outer-wrong.pcap 'ip and not (udp and dst port 51820 and udp[8] = 1)') -eq 0 ]] ||
        fail "with a wrong key, the outer link carried more than handshake initiations"
    no_clear_marker outer-wrong.pcap || fail "the guest's request crossed the outer link in clear"
    [[ $(packets tap-wrong.pcap 'ip and net 203.0.113.0/24') -eq 0 ]] ||
        fail "with a wrong key, packets for the tunnel network appeared on the TAP in clear"
    mv "$SERIAL_LOG" "$WORK/serial-wrong-key.log"
    cat "$WORK/serial-right-key.log" "$WORK/serial-wrong-key.log" >"$SERIAL_LOG"
}
