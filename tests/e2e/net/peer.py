#!/usr/bin/env python3
"""The guest's network peer in the net-* e2e scenarios (runs in L1).

Serves, on addresses already configured on the TAP:
  tcp ADDR:PORT   answers every HTTP request with "E2E-TCP-OK PORT" and logs it
  udp ADDR:PORT   logs every datagram with its source address
  dns ADDR NAME=IP...  answers A queries for NAME with IP (TTL 60), NXDOMAIN otherwise
  connect ADDR:PORT    (after --delay s) tries to connect to the guest, logs the outcome
  sink ADDR:PORT  counts what each connection sends, logs bytes and seconds
Every event is one line in the log file given by --log. Stops on SIGTERM.
"""
import argparse
import socket
import struct
import threading
import time


def log(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")


def tcp_server(addr, port, path):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(8)
    while True:
        conn, peer = s.accept()
        log(path, f"tcp {addr}:{port} from {peer[0]}:{peer[1]}")
        try:
            conn.settimeout(5)
            try:
                conn.recv(4096)
            except OSError:
                pass
            body = f"E2E-TCP-OK {port}\n".encode()
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        finally:
            conn.close()


def udp_server(addr, port, path):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    while True:
        data, peer = s.recvfrom(2048)
        log(path, f"udp {addr}:{port} from {peer[0]}:{peer[1]} {data.decode(errors='replace').strip()}")


def sink_server(addr, port, path):
    """Counts the bytes of each connection; logs first-to-last-byte time."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(1)
    while True:
        conn, peer = s.accept()
        conn.settimeout(30)
        total, first, last = 0, None, None
        try:
            while True:
                b = conn.recv(1 << 16)
                if not b:
                    break
                last = time.monotonic()
                first = first or last
                total += len(b)
        except OSError:
            pass
        conn.close()
        secs = (last - first) if first else 0.0
        log(path, f"sink {addr}:{port} from {peer[0]} bytes={total} secs={secs:.3f}")


def dns_answer(query, names):
    """A minimal DNS responder: one question, A records only."""
    ident, flags, qd = struct.unpack("!HHH", query[:6])
    pos, labels = 12, []
    while query[pos]:
        n = query[pos]
        labels.append(query[pos + 1:pos + 1 + n].decode().lower())
        pos += 1 + n
    qtype, _ = struct.unpack("!HH", query[pos + 1:pos + 5])
    question = query[12:pos + 5]
    name = ".".join(labels)
    ip = names.get(name) if qtype == 1 else None
    rcode = 0 if ip else 3
    header = struct.pack("!HHHHHH", ident, 0x8180 | rcode, 1, 1 if ip else 0, 0, 0)
    answer = b""
    if ip:
        answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(ip)
    return header + question + answer, name, ip


def dns_server(addr, names, path):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, 53))
    while True:
        query, peer = s.recvfrom(512)
        try:
            reply, name, ip = dns_answer(query, names)
        except (IndexError, struct.error, UnicodeDecodeError):
            continue
        log(path, f"dns {name} -> {ip} for {peer[0]}")
        s.sendto(reply, peer)


def connector(addr, port, delay, path):
    time.sleep(delay)
    for _ in range(3):
        try:
            c = socket.create_connection((addr, port), timeout=5)
            banner = c.recv(100).decode(errors="replace").strip()
            c.close()
            log(path, f"connect {addr}:{port} ok {banner}")
            return
        except OSError as e:
            log(path, f"connect {addr}:{port} failed {e.__class__.__name__}")
        time.sleep(2)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--log", required=True)
    p.add_argument("--tcp", action="append", default=[])
    p.add_argument("--udp", action="append", default=[])
    p.add_argument("--dns", help="ADDR")
    p.add_argument("--name", action="append", default=[], help="NAME=IP for --dns")
    p.add_argument("--connect", action="append", default=[], help="ADDR:PORT to try")
    p.add_argument("--delay", type=float, default=20.0)
    p.add_argument("--sink", action="append", default=[], help="ADDR:PORT counting received bytes")
    a = p.parse_args()
    threads = []
    for spec in a.tcp:
        addr, port = spec.rsplit(":", 1)
        threads.append(threading.Thread(target=tcp_server, args=(addr, int(port), a.log), daemon=True))
    for spec in a.udp:
        addr, port = spec.rsplit(":", 1)
        threads.append(threading.Thread(target=udp_server, args=(addr, int(port), a.log), daemon=True))
    if a.dns:
        names = dict(n.split("=", 1) for n in a.name)
        threads.append(threading.Thread(target=dns_server, args=(a.dns, names, a.log), daemon=True))
    for spec in a.sink:
        addr, port = spec.rsplit(":", 1)
        threads.append(threading.Thread(target=sink_server, args=(addr, int(port), a.log), daemon=True))
    for spec in a.connect:
        addr, port = spec.rsplit(":", 1)
        threads.append(threading.Thread(target=connector, args=(addr, int(port), a.delay, a.log), daemon=True))
    for t in threads:
        t.start()
    log(a.log, "peer ready")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
