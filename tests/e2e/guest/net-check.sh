#!/bin/sh
# Runs inside the busybox guest for the net-* scenarios: brings eth0 up
# with the address in `guest-ip` (beside this script), then runs the
# scenario's `steps` file with these helpers, each printing KEY=VALUE:
#   tcp NAME ADDR PORT        E2E-TCP-NAME=ok|fail (an HTTP GET to the peer)
#   udp ADDR PORT MESSAGE     sends one datagram (the peer logs it)
#   lookup NAME SERVER        E2E-DNS-NAME=ADDR|fail
#   listen PORT SECONDS       accepts connections for SECONDS (peer tries)
here=$(dirname "$0")
ip link set lo up
ip link set eth0 up
ip addr add "$(cat "$here/guest-ip")" dev eth0
echo "E2E-NET-UP=$(ip -4 addr show eth0 | sed -n 's/.*inet \([^ ]*\).*/\1/p')"
tcp() {
    if out=$(wget -q -T 5 -O - "http://$2:$3/" 2>/dev/null) && [ -n "$out" ]; then
        echo "E2E-TCP-$1=ok"
    else
        echo "E2E-TCP-$1=fail"
    fi
}
udp() { echo "$3" | nc -u -w 1 "$1" "$2" 2>/dev/null; }
lookup() {
    a=$(nslookup "$1" "$2" 2>/dev/null | sed -n '/^Name:/,$ s/^Address[^:]*: *\([0-9.]*\).*/\1/p' | tail -n1)
    echo "E2E-DNS-$1=${a:-fail}"
}
listen() { timeout "$2" nc -l -p "$1" </dev/null >/dev/null 2>&1; true; }
. "$here/steps"
