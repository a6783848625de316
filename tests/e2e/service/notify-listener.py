#!/usr/bin/env python3
"""notify-listener.py SOCKET LOG: the service manager's side of sd_notify
for the package-install scenario. Binds a Unix datagram socket at SOCKET
and appends every datagram to LOG, one `N.NNN <state with \\n as |>` line
each (seconds since the listener started), until killed."""
import os
import socket
import sys
import time

path, log = sys.argv[1], sys.argv[2]
if os.path.exists(path):
    os.unlink(path)
listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
listener.bind(path)
start = time.monotonic()
with open(log, "a", buffering=1) as out:
    out.write("listening\n")
    while True:
        data = listener.recv(4096)
        text = data.decode("utf-8", "replace").replace("\n", "|")
        out.write(f"{time.monotonic() - start:.3f} {text}\n")
