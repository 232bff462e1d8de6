#!/usr/bin/env python3
"""An HTTP-mode function: a small HTTP/1.1 server, standard library only.

fwatchdog (mode=http) starts it once and proxies every request to it:

    GET  /ready              200 once serving (use as ready_path)
    GET  /sse?n=5&ms=200     server-sent events, one every ms milliseconds
    GET  /ws                 websocket echo
    ANY  /echo               streams the request body back
    ANY  /status/NNN         answers with status NNN (?retry_after=S adds Retry-After: S)
    GET  /sleep?s=2          answers after s seconds
    ANY  /close              answers, then closes the connection
    POST /crash              exits with status 3 (to see the watchdog restart policy)
    ANY  anything else       JSON describing the request

It listens on 127.0.0.1:$LISTEN_PORT (default 5000).
"""

import base64
import hashlib
import json
import os
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CHUNK = 64 * 1024


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes
    server_version = "python-http-example"

    def log_message(self, fmt, *args):  # one line per request on stderr, forwarded by fwatchdog
        if os.environ.get("QUIET") != "1":
            sys.stderr.write("%s %s\n" % (self.command, fmt % args))

    # --- request body -----------------------------------------------------------------------
    def body_chunks(self):
        """Yields the request body in pieces, from Content-Length or chunked encoding."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = size
                while left:
                    piece = self.rfile.read(min(left, CHUNK))
                    if not piece:
                        return
                    left -= len(piece)
                    yield piece
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                piece = self.rfile.read(min(left, CHUNK))
                if not piece:
                    return
                left -= len(piece)
                yield piece

    # --- responses --------------------------------------------------------------------------
    def send_bytes(self, status, body, content_type="text/plain; charset=utf-8"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def start_chunked(self, status, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_chunked(self):
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # --- routes -----------------------------------------------------------------------------
    def handle_any(self):
        try:
            self.route()
        except (BrokenPipeError, ConnectionResetError):
            # The client (or the watchdog, on a timeout) went away; nothing left to answer.
            self.close_connection = True

    def route(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        path = url.path
        if path == "/ready":
            return self.send_bytes(200, b"ready\n")
        if path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        if path == "/sse":
            n = int(query.get("n", ["5"])[0])
            pause = int(query.get("ms", ["200"])[0]) / 1000
            self.start_chunked(200, "text/event-stream")
            for i in range(n):
                self.chunk(b"id: %d\ndata: event %d\n\n" % (i, i))
                time.sleep(pause)
            return self.end_chunked()
        if path == "/echo":
            self.start_chunked(200, self.headers.get("Content-Type", "application/octet-stream"))
            for piece in self.body_chunks():
                self.chunk(piece)
            return self.end_chunked()
        if path.startswith("/status/"):
            for _ in self.body_chunks():
                pass
            status = int(path.rsplit("/", 1)[1])
            self.send_response(status)
            if "retry_after" in query:
                self.send_header("Retry-After", query["retry_after"][0])
            body = b"status as asked\n"
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return
        if path == "/close":
            # Answers, then closes the connection (as a server with a short idle limit would).
            for _ in self.body_chunks():
                pass
            self.send_response(200)
            self.send_header("Content-Length", "7")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"closed\n")
            self.close_connection = True
            return
        if path == "/sleep":
            time.sleep(float(query.get("s", ["1"])[0]))
            return self.send_bytes(200, b"slept\n")
        if path == "/crash":
            sys.stderr.write("crashing as asked\n")
            sys.stderr.flush()
            os._exit(3)
        size = sum(len(piece) for piece in self.body_chunks())
        reply = {
            "method": self.command,
            "path": path,
            "query": url.query,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body_bytes": size,
            "peer_port": self.client_address[1],
            "target": self.path,
        }
        self.send_bytes(200, json.dumps(reply).encode(), "application/json")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = handle_any

    # --- websocket echo (RFC 6455, no extensions) -------------------------------------------
    def websocket(self):
        key = self.headers.get("Sec-WebSocket-Key", "").encode()
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode = head[0] & 0x0F
            length = head[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 0x8:  # close: answer and stop
                self.ws_send(0x8, data[:2])
                return
            if opcode == 0x9:  # ping
                self.ws_send(0xA, data)
                continue
            self.ws_send(opcode, data)

    def ws_send(self, opcode, data):
        if len(data) < 126:
            header = struct.pack("!BB", 0x80 | opcode, len(data))
        elif len(data) < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 126, len(data))
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 127, len(data))
        self.wfile.write(header + data)
        self.wfile.flush()


class Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 drops connections under load (each drop costs the
    # client a 1 s SYN retransmit).
    request_queue_size = 1024
    daemon_threads = True


def main():
    port = int(os.environ.get("LISTEN_PORT", "5000"))
    server = Server(("127.0.0.1", port), Handler)
    sys.stderr.write("python-http example listening on 127.0.0.1:%d\n" % port)
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    import signal

    # SIGTERM (sent by fwatchdog after it has drained) ends the server cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    main()
