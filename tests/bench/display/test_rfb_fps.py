#!/usr/bin/env python3
"""Tests of rfb-fps.py, the display benchmark's VNC client, against a
scripted RFB server on a Unix socket: what it counts (screens' worth of
pixels, whole-screen updates), that it skips raw and ZRLE rectangles by
their sizes, and that refusals and protocol breaks end in a clear error.

    python3 tests/bench/display/test_rfb_fps.py
"""

import contextlib
import importlib.util
import io
import os
import socket
import struct
import tempfile
import threading
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC = importlib.util.spec_from_file_location("rfb_fps", os.path.join(HERE, "rfb-fps.py"))
rfb_fps = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(rfb_fps)

WIDTH, HEIGHT = 64, 40
RAW, ZRLE = 0, 16


def rect(x, y, w, h, encoding, payload_len=None):
    header = struct.pack(">HHHHi", x, y, w, h, encoding)
    if encoding == RAW:
        return header + bytes(w * h * 4)
    return header + struct.pack(">I", payload_len) + bytes(payload_len)


def update(*rects):
    return struct.pack(">BxH", 0, len(rects)) + b"".join(rects)


def server_init():
    pixel_format = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
    return struct.pack(">HH", WIDTH, HEIGHT) + pixel_format + struct.pack(">I", 4) + b"test"


class ScriptedServer:
    """Accepts one client, runs the handshake and then sends MESSAGES; reads
    and drops whatever the client sends."""

    def __init__(self, path, messages, security=b"\x01\x01"):
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.messages = messages
        self.security = security
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        conn, _ = self.listener.accept()
        with conn:
            conn.sendall(b"RFB 003.008\n")
            conn.recv(12)
            conn.sendall(self.security)
            if self.security[0] == 0:
                return
            conn.recv(1)
            conn.sendall(struct.pack(">I", 0))
            conn.recv(1)
            conn.sendall(server_init())
            drain = threading.Thread(target=self.drain, args=(conn,), daemon=True)
            drain.start()
            for message in self.messages:
                conn.sendall(message)
            # Keep the connection open until the client's time is up.
            drain.join(timeout=5)

    @staticmethod
    def drain(conn):
        with contextlib.suppress(OSError):
            while conn.recv(4096):
                pass


class RfbFpsTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.dir.name, "vnc.sock")

    def tearDown(self):
        self.dir.cleanup()

    def run_client(self, messages, encoding="raw", security=b"\x01\x01"):
        server = ScriptedServer(self.path, messages, security)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rfb_fps.measure(self.path, 1.0, encoding)
        server.listener.close()
        fields = dict(item.split("=", 1) for item in out.getvalue().split())
        return fields

    def test_counts_whole_screens_of_pixels_and_whole_screen_updates(self):
        full = update(rect(0, 0, WIDTH, HEIGHT, RAW))
        half_top = update(rect(0, 0, WIDTH, HEIGHT // 2, RAW))
        half_bottom = update(rect(0, HEIGHT // 2, WIDTH, HEIGHT // 2, RAW))
        # The first update answers the non-incremental request: not counted.
        fields = self.run_client([full, full, full, half_top, half_bottom, b"\x02"])
        self.assertEqual(fields["frames"], "3.0")
        self.assertEqual(fields["updates"], "4")
        self.assertEqual(fields["size"], f"{WIDTH}x{HEIGHT}")
        self.assertAlmostEqual(float(fields["full-fps"]) / float(fields["fps"]), 2 / 3, places=2)

    def test_zrle_rectangles_are_skipped_by_their_length(self):
        # Payload lengths that are not a pixel count: only the u32 prefix
        # says where the rectangle ends.
        first = update(rect(0, 0, WIDTH, HEIGHT, ZRLE, 7))
        tiles = update(rect(0, 0, WIDTH, HEIGHT // 2, ZRLE, 13), rect(0, HEIGHT // 2, WIDTH, HEIGHT // 2, ZRLE, 1))
        fields = self.run_client([first, tiles, tiles], encoding="zrle")
        self.assertEqual(fields["frames"], "2.0")
        self.assertEqual(fields["updates"], "2")

    def test_rectangle_in_an_encoding_not_offered_is_an_error(self):
        first = update(rect(0, 0, WIDTH, HEIGHT, RAW))
        with self.assertRaisesRegex(rfb_fps.ProtocolError, "encoding 16"):
            self.run_client([first, update(rect(0, 0, WIDTH, HEIGHT, ZRLE, 4))])

    def test_refused_connection_reports_the_servers_reason(self):
        reason = b"too many clients"
        refusal = b"\x00" + struct.pack(">I", len(reason)) + reason
        with self.assertRaisesRegex(rfb_fps.ProtocolError, "too many clients"):
            self.run_client([], security=refusal)

    def test_unknown_server_message_is_an_error(self):
        first = update(rect(0, 0, WIDTH, HEIGHT, RAW))
        with self.assertRaisesRegex(rfb_fps.ProtocolError, "message type 9"):
            self.run_client([first, b"\x09"])


if __name__ == "__main__":
    unittest.main()
