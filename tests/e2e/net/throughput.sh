#!/usr/bin/env bash
# Guest-to-peer TCP throughput through securevm's virtio-net, once with the
# e2e role's rules (default deny, a dozen rules, conntrack) and once with an
# allow-all rule set, in the same place (run it with scripts/nested). Prints
#   throughput-filtered-mib-s: X
#   throughput-allow-all-mib-s: Y
# Used by scripts/bench-net. Environment: BENCH_NET_MIB (default 16).
set -euo pipefail
E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO=$(cd "$E2E_DIR/../.." && pwd)
SECUREVM=${SECUREVM:-$REPO/target/release/securevm}
# shellcheck source=../../../scripts/lib/common.sh
source "$REPO/scripts/lib/common.sh"
load_assets
# shellcheck source=../lib.sh
source "$E2E_DIR/lib.sh"
fail() { echo "bench-net: $*" >&2; exit 1; }
MIB=${BENCH_NET_MIB:-16}
GUEST_QUIET=quiet

run_one() { # NAME POLICY_TOML
    WORK=$(mktemp -d)
    SERIAL_LOG=$WORK/serial.log
    cp "$2" "$WORK/policy.toml"
    minisign -G -W -p "$WORK/org.pub" -s "$WORK/org.key" >/dev/null
    minisign -S -s "$WORK/org.key" -m "$WORK/policy.toml" -t "securevm-policy version=1" >/dev/null
    printf '%s/24\n' "$NET_GUEST_IP" >"$WORK/guest-ip"
    echo "dd if=/dev/zero bs=65536 count=$((MIB * 16)) 2>/dev/null | nc -w 5 192.0.2.1 5001" >"$WORK/steps"
    make_script_disk "$WORK/e2e" "$E2E_DIR/guest/net-check.sh" "$WORK/guest-ip" "$WORK/steps"
    net_up --sink 192.0.2.1:5001
    net_run 900
    net_down
    [[ $VMM_EXIT -eq 0 ]] || fail "$1 run: securevm exited $VMM_EXIT (log $SERIAL_LOG)"
    local line bytes secs
    line=$(grep "^sink " "$PEER_LOG" | tail -n1)
    bytes=$(sed -n 's/.*bytes=\([0-9]*\).*/\1/p' <<<"$line")
    secs=$(sed -n 's/.*secs=\([0-9.]*\).*/\1/p' <<<"$line")
    [[ ${bytes:-0} -eq $((MIB << 20)) ]] || fail "$1 run: the peer received ${bytes:-0} of $((MIB << 20)) bytes"
    awk -v b="$bytes" -v s="$secs" -v n="$1" 'BEGIN { printf "throughput-%s-mib-s: %.2f\n", n, b / 1048576 / s }'
}

allow_all=$(mktemp)
sed -e 's/^default = "deny"/default = "allow"/' "$E2E_DIR/net/policy.toml" |
    awk '/^\[\[roles.netuser.network.rules\]\]/ { skip = 1 } !skip { print }' >"$allow_all"
run_one filtered "$E2E_DIR/net/policy.toml"
run_one allow-all "$allow_all"
