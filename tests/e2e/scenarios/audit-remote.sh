# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# audit-remote: with the policy's `forward = ["remote"]`, a real rsyslog
# with TLS (imtcp, gtls driver, client certificates required), its
# certificates made here with the openssl CLI, receives every record over
# RFC 5425. Stopped as the VM starts and restarted while it runs, it still
# ends up with every record of the session: `securevm audit verify
# --collected` on its file reports no gap. securevm waits at most 5 s at
# the end of a session and says so when records are left for the next
# one (a slow L1 can need longer to reconnect): then the next session must
# deliver them first, and a gap that securevm did not announce fails. A
# collector whose certificate the policy's CA did not sign (same name,
# another CA) gets nothing.
TIMEOUT=480

# cert NAME CN [ISSUER]: NAME.pem and NAME.key in $WORK, for CN, signed
# by ISSUER (self-signed as a CA without one).
cert() {
    local name=$1 cn=$2 issuer=${3:-} extra=()
    if [[ -n $issuer ]]; then
        extra=(-CA "$WORK/$issuer.pem" -CAkey "$WORK/$issuer.key")
    else
        extra=(-addext "basicConstraints=critical,CA:TRUE")
    fi
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -keyout "$WORK/$name.key" -out "$WORK/$name.pem" -subj "/CN=$cn" \
        -addext "subjectAltName=DNS:$cn" "${extra[@]}" 2>/dev/null
}

prepare() {
    id_prepare
    cert ca "e2e audit CA"
    cert collector collector.e2e ca
    cert client pc-e2e ca
    cert rogue-ca "rogue CA"
    cert rogue collector.e2e rogue-ca
    sed -i -e 's/^version = 1$/version = 1\nformat = 4/' \
        -e "s|^path = \"/var/log/securevm/audit.jsonl\"$|&\nforward = [\"remote\"]\n\n[audit.remote]\nhost = \"127.0.0.1\"\nca_file = \"$WORK/ca.pem\"\nserver_name = \"collector.e2e\"|" \
        "$WORK/policy.toml"
    grep -q '^\[audit.remote\]$' "$WORK/policy.toml" || fail "the policy has no [audit.remote]"
    minisign -S -s "$WORK/org.key" -m "$WORK/policy.toml" -t "securevm-policy version=1" >/dev/null
    make_script_disk "$WORK/e2e" "$(guest_script id-check.sh)"
}

# collector_start NAME FILE: rsyslogd (a daemon, pid in $WORK/rsyslog.pid)
# on port 6514 with TLS, presenting certificate NAME and requiring a client
# certificate from the CA, writing each `securevm` message to FILE.
collector_start() {
    mkdir -p "$WORK/rsyslog"
    cat >"$WORK/rsyslog-$1.conf" <<CONF
global(workDirectory="$WORK/rsyslog" maxMessageSize="64k"
    DefaultNetstreamDriver="gtls"
    DefaultNetstreamDriverCAFile="$WORK/ca.pem"
    DefaultNetstreamDriverCertFile="$WORK/$1.pem"
    DefaultNetstreamDriverKeyFile="$WORK/$1.key")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="x509/certvalid")
input(type="imtcp" port="6514")
template(name="recordOnly" type="string" string="%msg%\n")
if \$app-name == "securevm" then {
    action(type="omfile" file="$2" template="recordOnly")
    stop
}
CONF
    rsyslogd -f "$WORK/rsyslog-$1.conf" -i "$WORK/rsyslog.pid" >>"$WORK/rsyslog.log" 2>&1 ||
        fail "rsyslogd did not start: $(tail -n 3 "$WORK/rsyslog.log")"
    local i
    for i in $(seq 50); do
        ss -ltn 2>/dev/null | grep -q ':6514 ' && return 0
        sleep 0.2
    done
    fail "rsyslogd does not listen on 6514: $(tail -n 3 "$WORK/rsyslog.log")"
}

collector_stop() {
    [[ -s $WORK/rsyslog.pid ]] || return 0
    local pid i
    pid=$(<"$WORK/rsyslog.pid")
    kill "$pid" 2>/dev/null || true
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    rm -f "$WORK/rsyslog.pid"
}

# remote_run: one session as alice, forwarding with the machine's client certificate.
remote_run() {
    id_run 240 alice "$WORK/alice.pass" \
        --audit-client-cert "$WORK/client.pem" --audit-client-key "$WORK/client.key"
    expect_exit 0
    expect_serial "E2E-ID-RUN=ok"
}

# collected_verifies FILE: `audit verify --collected` finds no gap up to
# the last record of the machine's log.
# collected_whole FILE: whether FILE verifies as a collector's copy of the
# whole log, looking again for up to 10 s (rsyslog writes behind); sets
# AUDIT_OUT and LAST_SEQ.
collected_whole() {
    LAST_SEQ=$(tail -n 1 "$WORK/audit.jsonl" | sed 's/.*"seq":\([0-9]*\).*/\1/')
    local i
    for i in $(seq 50); do
        set +e
        AUDIT_OUT=$("$SECUREVM" audit verify --collected "$1" --audit-key "$WORK/audit.key" 2>&1)
        AUDIT_EXIT=$?
        set -e
        [[ $AUDIT_EXIT -eq 0 && $AUDIT_OUT == *"up to seq $LAST_SEQ, no gap" ]] && return 0
        sleep 0.2
    done
    return 1
}

collected_verifies() {
    collected_whole "$1" || fail "the collector's copy is not whole up to seq $LAST_SEQ: $AUDIT_OUT"
}

# left_for_next_session: how many times securevm said it left records for
# the next session.
left_for_next_session() {
    grep -c "audit forwarding to collector 127.0.0.1:6514: not all records were delivered within 5s; the next session resends them from the log" "$SERIAL_LOG" || true
}

run() {
    trap collector_stop EXIT
    # L1 brings up no interface, not even loopback, where the collector is.
    ip link set lo up
    collector_start collector "$WORK/collected.jsonl"
    remote_run
    collected_verifies "$WORK/collected.jsonl"
    echo "session 1: $AUDIT_OUT"

    # Session 2: the collector stops once the VM starts and comes back.
    local left_before
    left_before=$(left_for_next_session)
    (
        until [[ $(grep -c '"event":"vm-start"' "$WORK/audit.jsonl") -ge 2 ]]; do sleep 0.05; done
        collector_stop
        echo "collector stopped at seq $(tail -n 1 "$WORK/audit.jsonl" | sed 's/.*"seq":\([0-9]*\).*/\1/')" >"$WORK/outage.txt"
        sleep 0.5
        collector_start collector "$WORK/collected.jsonl"
    ) &
    local outage=$!
    remote_run
    wait "$outage" || fail "stopping and restarting the collector failed"
    [[ -s $WORK/outage.txt ]] || fail "the collector was never stopped"
    cat "$WORK/outage.txt"
    if collected_whole "$WORK/collected.jsonl"; then
        echo "session 2: $AUDIT_OUT"
    else
        (($(left_for_next_session) > left_before)) ||
            fail "the collector's copy is not whole up to seq $LAST_SEQ, and securevm did not say it left records for the next session: $AUDIT_OUT"
        echo "session 2 left records for the next session: $AUDIT_OUT"
        remote_run
        collected_verifies "$WORK/collected.jsonl"
        echo "session 3, with the collector up, delivered them first: $AUDIT_OUT"
    fi

    # Session 3: a collector with the right name but another CA's certificate.
    collector_stop
    collector_start rogue "$WORK/rogue.jsonl"
    remote_run
    grep -q "audit forwarding to collector 127.0.0.1:6514: TLS handshake: .*certificate verify failed" "$SERIAL_LOG" ||
        fail "securevm did not report the collector's certificate as refused"
    [[ ! -s $WORK/rogue.jsonl ]] || fail "the rogue collector received records: $(head -n 2 "$WORK/rogue.jsonl")"
    echo "the collector with another CA's certificate got nothing"
}
