# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# audit-syslog: with the policy's `forward = ["syslog"]`, a real rsyslog
# listening on /dev/log (imuxsock, RFC 5424 parser, a template that writes
# only the message) stores every record of the session's audit log
# unchanged and in order. With rsyslog stopped, a session still runs and
# keeps its records in the local log; the next session, with rsyslog back,
# delivers them first, so rsyslog's copy is the whole log again, byte for
# byte, and verifies with the machine key.
TIMEOUT=420

prepare() {
    id_prepare
    sed -i -e 's/^version = 1$/version = 1\nformat = 4/' \
        -e 's|^path = "/var/log/securevm/audit.jsonl"$|&\nforward = ["syslog"]|' "$WORK/policy.toml"
    grep -q '^forward = \["syslog"\]$' "$WORK/policy.toml" || fail "the policy has no forward line"
    minisign -S -s "$WORK/org.key" -m "$WORK/policy.toml" -t "securevm-policy version=1" >/dev/null
    make_script_disk "$WORK/e2e" "$(guest_script id-check.sh)"
}

# rsyslog_start: rsyslogd in the foreground on /dev/log, writing the
# message of each `securevm` entry, and nothing else, to $WORK/syslog.jsonl.
rsyslog_start() {
    mkdir -p "$WORK/rsyslog"
    cat >"$WORK/rsyslog.conf" <<CONF
global(workDirectory="$WORK/rsyslog" maxMessageSize="64k")
module(load="imuxsock" SysSock.Name="/dev/log" SysSock.UseSpecialParser="off" SysSock.ParseHostname="on")
template(name="recordOnly" type="string" string="%msg%\n")
if \$app-name == "securevm" then {
    action(type="omfile" file="$WORK/syslog.jsonl" template="recordOnly")
    stop
}
CONF
    rm -f /dev/log
    rsyslogd -n -f "$WORK/rsyslog.conf" -i "$WORK/rsyslog/pid" >>"$WORK/rsyslog.log" 2>&1 &
    RSYSLOG_PID=$!
    local i
    for i in $(seq 50); do
        [[ -S /dev/log ]] && return 0
        sleep 0.2
    done
    fail "rsyslogd did not create /dev/log: $(tail -n 3 "$WORK/rsyslog.log")"
}

rsyslog_stop() {
    [[ -n ${RSYSLOG_PID:-} ]] || return 0
    kill "$RSYSLOG_PID" 2>/dev/null || true
    wait "$RSYSLOG_PID" 2>/dev/null || true
    RSYSLOG_PID=
    rm -f /dev/log
}

# expect_syslog_copy WHEN: rsyslog's file becomes the audit log, byte for byte.
expect_syslog_copy() {
    local i
    for i in $(seq 50); do
        cmp -s "$WORK/audit.jsonl" "$WORK/syslog.jsonl" && return 0
        sleep 0.2
    done
    fail "$1: rsyslog's copy differs from the audit log: $(diff "$WORK/audit.jsonl" "$WORK/syslog.jsonl" 2>&1 | head -n 4)"
}

run() {
    trap rsyslog_stop EXIT
    rsyslog_start
    id_run 240 alice "$WORK/alice.pass"
    expect_exit 0
    expect_serial "E2E-ID-RUN=ok"
    [[ $(audit_count vm-stop) -eq 1 ]] || fail "no vm-stop record"
    expect_syslog_copy "one session"
    echo "rsyslog holds all $(wc -l <"$WORK/audit.jsonl") records of the session"

    rsyslog_stop
    id_run 240 alice "$WORK/alice.pass"
    expect_exit 0
    [[ $(audit_count vm-stop) -eq 2 ]] || fail "the session without rsyslog kept no vm-stop record"
    grep -q "audit forwarding to syslog /dev/log: " "$SERIAL_LOG" ||
        fail "securevm did not say that syslog was unreachable"
    local held
    held=$(wc -l <"$WORK/syslog.jsonl")
    (($(wc -l <"$WORK/audit.jsonl") > held)) || fail "the session without rsyslog wrote no records"

    rsyslog_start
    id_run 240 alice "$WORK/alice.pass"
    expect_exit 0
    [[ $(audit_count vm-stop) -eq 3 ]] || fail "no third vm-stop record"
    expect_syslog_copy "after rsyslog came back"
    audit_verify "$WORK/syslog.jsonl"
    [[ $AUDIT_EXIT -eq 0 && $AUDIT_OUT == "audit: all $(wc -l <"$WORK/audit.jsonl") records verify" ]] ||
        fail "rsyslog's copy does not verify: $AUDIT_OUT"
    echo "rsyslog holds all $(wc -l <"$WORK/audit.jsonl") records of three sessions, one of them while it was down"
}
