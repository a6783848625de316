#!/bin/sh
# Runs inside the busybox guest for the net-* scenarios: brings eth0 up
# with the address in `guest-ip` (beside this script), then runs the
# scenario's `steps` file with these helpers, each printing KEY=VALUE:
#   tcp NAME ADDR PORT        E2E-TCP-NAME=ok|fail (an HTTP GET to the peer,
#                             two attempts)
#   udp ADDR PORT MESSAGE     sends a datagram carrying MESSAGE (the peer logs it)
#   lookup NAME SERVER        E2E-DNS-NAME=ADDR|fail
#   listen PORT SECONDS       accepts connections for SECONDS (peer tries)
here=$(dirname "$0")
ip link set lo up
ip link set eth0 up
ip addr add "$(cat "$here/guest-ip")" dev eth0
echo "E2E-NET-UP=$(ip -4 addr show eth0 | sed -n 's/.*inet \([^ ]*\).*/\1/p')"
tcp() {
    # busybox wget crashes in this static build; nc speaks the HTTP.
    # A failed attempt is printed and tried once more: under nested
    # emulation an allowed connection has, once in many CI runs, not
    # completed within nc's 5 s; a refused one fails both attempts.
    for attempt in 1 2; do
        out=$(printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 "$2" "$3" 2>/dev/null)
        if echo "$out" | grep -q E2E-TCP-OK; then
            echo "E2E-TCP-$1=ok"
            return
        fi
        echo "E2E-TCP-ATTEMPT-$attempt-$1=fail"
    done
    echo "E2E-TCP-$1=fail"
}
# busybox nc has no UDP here; a TFTP read request carries MESSAGE as the
# file name in one datagram, which the peer logs.
udp() { timeout 3 tftp -g -r "$3" -l /tmp/tftp.out "$1" "$2" >/dev/null 2>&1; true; }
lookup() {
    a=$(nslookup "$1" "$2" 2>/dev/null | sed -n '/^Name:/,$ s/^Address[^:]*: *\([0-9.]*\).*/\1/p' | tail -n1)
    echo "E2E-DNS-$1=${a:-fail}"
}
listen() { timeout "$2" nc -l -p "$1" </dev/null >/dev/null 2>&1; true; }
# shellcheck source=/dev/null # the scenario's steps, checked on their own
. "$here/steps"
