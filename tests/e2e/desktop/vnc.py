#!/usr/bin/python3
"""A minimal RFB 3.8 client for the desktop e2e scenarios (and a PNG tool).

Why our own: the scenarios must send and receive cut text (the clipboard),
which vncdotool's API does not expose for reading, and they run in L1 from
the host's Debian Python with Debian packages only. The independent "real VNC
client" check uses gvnccapture (Debian's gvncviewer) instead of this file.
Only what the tests need: no authentication ("None" security), raw
encoding, the DesktopSize pseudo-encoding; PNG written with zlib, read and
compared with Pillow (Debian's python3-pil).

Usage (SERVER is unix:PATH or tcp:HOST:PORT):
  vnc.py SERVER capture OUT.png        full-screen PNG; prints "WxH colours=N"
  vnc.py SERVER type TEXT              key presses for TEXT (US layout keysyms)
  vnc.py SERVER key NAME[+NAME...]     one chord, e.g. Return, ctrl+alt+F2
  vnc.py SERVER cut-text TEXT          send TEXT as the client's cut text
  vnc.py SERVER wait-cut-text SECONDS [--expect TEXT] [--log FILE] [--extended]
      print each server cut text as "cut-text: TEXT" (and append it to FILE);
      exit 0 once TEXT arrived (or, without --expect, at the first one),
      1 when SECONDS pass without it; --extended also announces the extended
      clipboard pseudo-encoding, the only way QEMU's VNC server sends it
  vnc.py png-info FILE.png             prints "WxH colours=N"
  vnc.py png-diff A.png B.png          prints the fraction of differing pixels
"""

import socket
import struct
import sys
import time
import zlib

RAW_ENCODING = 0
DESKTOP_SIZE_ENCODING = -223
# The extended clipboard pseudo-encoding (0xC0A1E5CE): QEMU's VNC server
# sends the guest's clipboard only to clients that announce it, as a
# "notify" the client answers with a "request", then a zlib "provide".
EXTENDED_CLIPBOARD_ENCODING = -1063131698
CLIPBOARD_TEXT = 1
CLIPBOARD_REQUEST = 1 << 25
CLIPBOARD_NOTIFY = 1 << 27
CLIPBOARD_PROVIDE = 1 << 28
# X11 keysyms of the named keys; single characters are their Latin-1 code.
KEYSYMS = {
    "return": 0xFF0D, "enter": 0xFF0D, "tab": 0xFF09, "escape": 0xFF1B, "esc": 0xFF1B,
    "backspace": 0xFF08, "delete": 0xFFFF, "space": 0x20, "home": 0xFF50, "end": 0xFF57,
    "left": 0xFF51, "up": 0xFF52, "right": 0xFF53, "down": 0xFF54,
    "shift": 0xFFE1, "ctrl": 0xFFE3, "control": 0xFFE3, "alt": 0xFFE9, "super": 0xFFEB,
}
KEYSYMS.update({f"f{n}": 0xFFBE + n - 1 for n in range(1, 13)})
# Characters typed with Shift on a US keyboard: sent with Shift held, as a
# keyboard would, so that servers mapping keysyms to scancodes agree.
US_SHIFTED = set('~!@#$%^&*()_+{}|:"<>?ABCDEFGHIJKLMNOPQRSTUVWXYZ')


class ProtocolError(Exception):
    pass


def connect(server, timeout):
    if server.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address = server[len("unix:"):]
    elif server.startswith("tcp:"):
        host, _, port = server[len("tcp:"):].rpartition(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        address = (host, int(port))
    else:
        raise ProtocolError(f"server must be unix:PATH or tcp:HOST:PORT, not {server!r}")
    sock.settimeout(timeout)
    sock.connect(address)
    return sock


class Client:
    def __init__(self, server, timeout=30.0, extended_clipboard=False):
        self.sock = connect(server, timeout)
        self.extended_clipboard = extended_clipboard
        self.handshake()

    def recv_exact(self, n):
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ProtocolError("the server closed the connection")
            data += chunk
        return bytes(data)

    def handshake(self):
        version = self.recv_exact(12)
        if not version.startswith(b"RFB 003."):
            raise ProtocolError(f"not an RFB server: {version!r}")
        self.sock.sendall(b"RFB 003.008\n")
        (count,) = struct.unpack("!B", self.recv_exact(1))
        if count == 0:
            (length,) = struct.unpack("!I", self.recv_exact(4))
            raise ProtocolError("server refused: " + self.recv_exact(length).decode("latin-1"))
        types = self.recv_exact(count)
        if 1 not in types:
            raise ProtocolError(f"server offers no 'None' security type: {list(types)}")
        self.sock.sendall(b"\x01")
        (result,) = struct.unpack("!I", self.recv_exact(4))
        if result != 0:
            raise ProtocolError("security handshake failed")
        self.sock.sendall(b"\x01")  # shared: other viewers stay connected
        self.width, self.height = struct.unpack("!HH", self.recv_exact(4))
        self.recv_exact(16)
        (name_len,) = struct.unpack("!I", self.recv_exact(4))
        self.name = self.recv_exact(name_len).decode("utf-8", "replace")
        # 32 bits per pixel, depth 24, little-endian true colour, BGRX.
        pixel_format = struct.pack("!BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
        self.sock.sendall(struct.pack("!B3x", 0) + pixel_format)
        encodings = [RAW_ENCODING, DESKTOP_SIZE_ENCODING]
        if self.extended_clipboard:
            encodings.append(EXTENDED_CLIPBOARD_ENCODING)
        self.sock.sendall(struct.pack("!BxH", 2, len(encodings)) + struct.pack(f"!{len(encodings)}i", *encodings))
        self.pixels = bytearray(self.width * self.height * 4)

    def request_update(self, incremental):
        self.sock.sendall(struct.pack("!BBHHHH", 3, 1 if incremental else 0, 0, 0, self.width, self.height))

    def read_message(self):
        """One server message: ("update", None), ("cut-text", TEXT) or ("other", None)."""
        (kind,) = struct.unpack("!B", self.recv_exact(1))
        if kind == 0:
            self.read_update()
            return "update", None
        if kind == 1:
            _, _, count = struct.unpack("!xHH", self.recv_exact(5))
            self.recv_exact(count * 6)
            return "other", None
        if kind == 2:
            return "other", None
        if kind == 3:
            (length,) = struct.unpack("!3xi", self.recv_exact(7))
            if length >= 0:
                return "cut-text", self.recv_exact(length).decode("latin-1")
            if not self.extended_clipboard:
                raise ProtocolError("the server sent extended clipboard data this client did not ask for")
            return self.read_extended_clipboard(-length)
        raise ProtocolError(f"unknown server message type {kind}")

    def read_update(self):
        (count,) = struct.unpack("!xH", self.recv_exact(3))
        for _ in range(count):
            x, y, w, h, encoding = struct.unpack("!HHHHi", self.recv_exact(12))
            if encoding == DESKTOP_SIZE_ENCODING:
                self.width, self.height = w, h
                self.pixels = bytearray(w * h * 4)
            elif encoding == RAW_ENCODING:
                if x + w > self.width or y + h > self.height:
                    raise ProtocolError(f"rectangle {w}x{h}+{x}+{y} outside the {self.width}x{self.height} screen")
                data = self.recv_exact(w * h * 4)
                for row in range(h):
                    start = ((y + row) * self.width + x) * 4
                    self.pixels[start:start + w * 4] = data[row * w * 4:(row + 1) * w * 4]
            else:
                raise ProtocolError(f"rectangle in encoding {encoding}, which was not asked for")

    def read_extended_clipboard(self, length):
        if length < 4:
            raise ProtocolError(f"extended clipboard message of {length} bytes")
        (flags,) = struct.unpack("!I", self.recv_exact(4))
        payload = self.recv_exact(length - 4)
        if flags & CLIPBOARD_NOTIFY and flags & CLIPBOARD_TEXT:
            request = struct.pack("!I", CLIPBOARD_REQUEST | CLIPBOARD_TEXT)
            self.sock.sendall(struct.pack("!B3xi", 6, -len(request)) + request)
        elif flags & CLIPBOARD_PROVIDE and flags & CLIPBOARD_TEXT:
            data = zlib.decompress(payload)
            (size,) = struct.unpack("!I", data[:4])
            return "cut-text", data[4:4 + size].rstrip(b"\0").decode("utf-8", "replace")
        return "other", None

    def capture(self):
        """The whole screen as rows of RGB bytes."""
        self.request_update(incremental=False)
        while self.read_message()[0] != "update":
            pass
        rgb = bytearray(self.width * self.height * 3)
        rgb[0::3] = self.pixels[2::4]
        rgb[1::3] = self.pixels[1::4]
        rgb[2::3] = self.pixels[0::4]
        return self.width, self.height, bytes(rgb)

    def key(self, keysym, down):
        self.sock.sendall(struct.pack("!BBxxI", 4, 1 if down else 0, keysym))

    def chord(self, keysyms):
        for keysym in keysyms:
            self.key(keysym, True)
        for keysym in reversed(keysyms):
            self.key(keysym, False)

    def type_text(self, text):
        for char in text:
            if char == "\n":
                self.chord([KEYSYMS["return"]])
            elif ord(char) > 0xFF:
                raise ProtocolError(f"cannot type {char!r}: not Latin-1")
            elif char in US_SHIFTED:
                self.chord([KEYSYMS["shift"], ord(char)])
            else:
                self.chord([ord(char)])
            # Servers and guests drop keys that come faster than they poll.
            time.sleep(0.05)

    def cut_text(self, text):
        data = text.encode("latin-1")
        self.sock.sendall(struct.pack("!B3xI", 6, len(data)) + data)


def keysym_of(name):
    if len(name) == 1:
        return ord(name)
    try:
        return KEYSYMS[name.lower()]
    except KeyError:
        raise ProtocolError(f"unknown key name {name!r}") from None


def png_bytes(width, height, rgb):
    def chunk(kind, data):
        return struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data))

    stride = width * 3
    raw = b"".join(b"\x00" + rgb[row * stride:(row + 1) * stride] for row in range(height))
    header = struct.pack("!IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def read_png(path):
    """The PNG at path as an RGB image (Pillow: Debian's python3-pil)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def colours(image):
    """How many colours image has, counted up to a bound (more is "many")."""
    found = image.getcolors(maxcolors=1 << 16)
    return len(found) if found is not None else 1 << 16


def wait_cut_text(client, seconds, expect, log):
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return 1
        client.sock.settimeout(remaining)
        try:
            kind, text = client.read_message()
        except (socket.timeout, TimeoutError):
            return 1
        if kind != "cut-text":
            continue
        print(f"cut-text: {text}", flush=True)
        if log:
            with open(log, "a", encoding="utf-8") as f:
                f.write(text + "\n")
        if expect is None or text == expect:
            return 0


def main(argv):
    if len(argv) >= 2 and argv[0] == "png-info":
        image = read_png(argv[1])
        print(f"{image.width}x{image.height} colours={colours(image)}")
        return 0
    if len(argv) >= 3 and argv[0] == "png-diff":
        from PIL import ImageChops

        a, b = read_png(argv[1]), read_png(argv[2])
        if a.size != b.size:
            print(f"sizes differ: {a.width}x{a.height} and {b.width}x{b.height}")
            return 1
        # A pixel differs when any channel does: the channels' differences
        # summed into one band, then the zero bucket of its histogram.
        delta = ImageChops.difference(a, b).convert("L", (1, 1, 1, 0))
        same = delta.point(lambda value: 0 if value == 0 else 255).histogram()[0]
        print(f"{1 - same / (a.width * a.height):.6f}")
        return 0
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    server, command, args = argv[0], argv[1], argv[2:]
    extended = "--extended" in args
    args = [arg for arg in args if arg != "--extended"]
    client = Client(server, extended_clipboard=extended)
    if command == "capture" and len(args) == 1:
        width, height, rgb = client.capture()
        with open(args[0], "wb") as f:
            f.write(png_bytes(width, height, rgb))
        print(f"{width}x{height} colours={colours(read_png(args[0]))}")
    elif command == "type" and len(args) == 1:
        client.type_text(args[0])
    elif command == "key" and len(args) == 1:
        client.chord([keysym_of(name) for name in args[0].split("+")])
    elif command == "cut-text" and len(args) == 1:
        client.cut_text(args[0])
    elif command == "wait-cut-text" and args:
        expect = log = None
        rest = args[1:]
        while rest:
            if rest[0] == "--expect" and len(rest) >= 2:
                expect = rest[1]
            elif rest[0] == "--log" and len(rest) >= 2:
                log = rest[1]
            else:
                print(f"unknown option {rest[0]!r}", file=sys.stderr)
                return 2
            rest = rest[2:]
        return wait_cut_text(client, float(args[0]), expect, log)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    # Let the server read everything before the connection closes.
    time.sleep(0.2)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (ProtocolError, OSError) as error:
        print(f"vnc.py: {error}", file=sys.stderr)
        sys.exit(1)
