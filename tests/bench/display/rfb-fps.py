#!/usr/bin/env python3
"""rfb-fps: the VNC client of scripts/bench-display. Counts full-screen
updates an RFB 3.8 server delivers per second.

    rfb-fps.py SOCKET [--seconds T] [--encoding zrle|raw]

It connects to the server's Unix socket, takes security type None, asks for
32-bit true colour and offers exactly ONE encoding (so that two servers are
compared on the same one), then keeps one incremental
FramebufferUpdateRequest for the whole screen outstanding: the next request
goes out as soon as an update's header arrives, before its rectangles are
read, so the client's own round trip does not set the pace. For T seconds
it reads every update to its end (raw: the pixel bytes; ZRLE: the u32
length and the zlib bytes after it, skipped undecoded) and counts the
updates whose rectangles cover the whole screen.

Last line on stdout:
    frames=N seconds=S fps=F full-fps=F2 updates=U megabytes=M size=WxH client-cpu-s=C
fps counts screens' worth of pixels (the updates' areas summed, divided by
the screen's area): a server that sends one frame's change in two updates
is not penalised. full-fps counts only updates that covered the screen on
their own. client-cpu-s is the CPU time the client itself used while
counting: near S, the client and not the server set the pace. Exit
status 1 with a message on stderr when the server refuses or breaks the
protocol.
"""

import argparse
import select
import socket
import struct
import sys
import time

ENCODINGS = {"raw": 0, "zrle": 16}
SECURITY_NONE = 1


class ProtocolError(Exception):
    pass


class Reader:
    """Exact reads from the socket, with an absolute deadline."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = bytearray()
        self.received = 0
        self.deadline = None

        self.scratch = memoryview(bytearray(1 << 20))

    def wait_readable(self):
        if self.deadline is None:
            return
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        ready, _, _ = select.select([self.sock], [], [], left)
        if not ready:
            raise TimeoutError

    def fill(self, wanted):
        while len(self.buffer) < wanted:
            self.wait_readable()
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ProtocolError("the server closed the connection")
            self.received += len(chunk)
            self.buffer += chunk

    def read(self, count):
        self.fill(count)
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def skip(self, count):
        """Drops COUNT bytes; what is not buffered yet is received into a
        scratch buffer, never copied: raw frames are 4 MiB each."""
        buffered = min(count, len(self.buffer))
        del self.buffer[:buffered]
        count -= buffered
        while count > 0:
            self.wait_readable()
            got = self.sock.recv_into(self.scratch, min(count, len(self.scratch)))
            if not got:
                raise ProtocolError("the server closed the connection")
            self.received += got
            count -= got

    def u8(self):
        return self.read(1)[0]

    def u16(self):
        return struct.unpack(">H", self.read(2))[0]

    def u32(self):
        return struct.unpack(">I", self.read(4))[0]


def handshake(sock, reader):
    """RFB 3.8 up to ServerInit; returns (width, height)."""
    version = reader.read(12)
    if not version.startswith(b"RFB 003."):
        raise ProtocolError(f"not an RFB server: {version!r}")
    sock.sendall(b"RFB 003.008\n")
    count = reader.u8()
    if count == 0:
        reason = reader.read(reader.u32())
        raise ProtocolError(f"server refused the connection: {reason.decode(errors='replace')}")
    types = reader.read(count)
    if SECURITY_NONE not in types:
        raise ProtocolError(f"security type None not offered (offered {list(types)})")
    sock.sendall(bytes([SECURITY_NONE]))
    if reader.u32() != 0:
        reason = reader.read(reader.u32())
        raise ProtocolError(f"security handshake failed: {reason.decode(errors='replace')}")
    sock.sendall(b"\x01")  # ClientInit: shared
    width, height = reader.u16(), reader.u16()
    reader.skip(16)  # the server's pixel format
    reader.skip(reader.u32())  # the desktop name
    return width, height


def set_pixel_format(sock):
    # 32 bpp, depth 24, little endian, true colour, 8 bits a channel, red at
    # bit 16, green at 8, blue at 0.
    pixel_format = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
    sock.sendall(struct.pack(">B3x", 0) + pixel_format)


def set_encodings(sock, encoding):
    sock.sendall(struct.pack(">BxHi", 2, 1, encoding))


def request_update(sock, width, height, incremental):
    sock.sendall(struct.pack(">BBHHHH", 3, 1 if incremental else 0, 0, 0, width, height))


def read_update_body(reader, encoding, bytes_per_pixel):
    """The rectangles of one FramebufferUpdate (its header already read);
    returns the pixels they cover."""
    reader.skip(1)
    rects = reader.u16()
    area = 0
    for _ in range(rects):
        _x, _y, w, h, rect_encoding = struct.unpack(">HHHHi", reader.read(12))
        if rect_encoding != encoding:
            raise ProtocolError(f"rectangle in encoding {rect_encoding}, only {encoding} was offered")
        if rect_encoding == ENCODINGS["raw"]:
            reader.skip(w * h * bytes_per_pixel)
        else:
            reader.skip(reader.u32())
        area += w * h
    return area


def skip_other_message(reader, kind):
    if kind == 1:  # SetColourMapEntries
        reader.skip(3)
        reader.skip(reader.u16() * 6)
    elif kind == 2:  # Bell
        pass
    elif kind == 3:  # ServerCutText
        reader.skip(3)
        reader.skip(reader.u32())
    else:
        raise ProtocolError(f"unknown server message type {kind}")


def measure(path, seconds, encoding_name):
    encoding = ENCODINGS[encoding_name]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    reader = Reader(sock)
    reader.deadline = time.monotonic() + 30
    width, height = handshake(sock, reader)
    set_pixel_format(sock)
    set_encodings(sock, encoding)
    screen = width * height
    # The first, full update brings the client up to date; it is not counted.
    request_update(sock, width, height, incremental=False)
    while True:
        kind = reader.u8()
        if kind == 0:
            request_update(sock, width, height, incremental=True)
            read_update_body(reader, encoding, 4)
            break
        skip_other_message(reader, kind)

    start = time.monotonic()
    cpu_start = time.process_time()
    reader.deadline = start + seconds
    received_at_start = reader.received - len(reader.buffer)
    updates = full_updates = area_total = 0
    try:
        while True:
            kind = reader.u8()
            if kind != 0:
                skip_other_message(reader, kind)
                continue
            request_update(sock, width, height, incremental=True)
            area = read_update_body(reader, encoding, 4)
            updates += 1
            area_total += area
            if area >= screen:
                full_updates += 1
    except TimeoutError:
        pass
    elapsed = time.monotonic() - start
    cpu = time.process_time() - cpu_start
    sock.close()
    frames = area_total / screen
    megabytes = (reader.received - received_at_start) / 1e6
    print(
        f"frames={frames:.1f} seconds={elapsed:.1f} fps={frames / elapsed:.2f} "
        f"full-fps={full_updates / elapsed:.2f} updates={updates} megabytes={megabytes:.1f} "
        f"size={width}x{height} client-cpu-s={cpu:.1f}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("socket")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--encoding", choices=sorted(ENCODINGS), default="zrle")
    args = parser.parse_args()
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    try:
        measure(args.socket, args.seconds, args.encoding)
    except (ProtocolError, OSError) as err:
        print(f"rfb-fps: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
