#!/usr/bin/env python3
"""A callback receiver for asynchronous calls: prints every result fgateway delivers.

    python3 examples/callback-receiver/receiver.py            # listens on 127.0.0.1:9000
    CALLBACK_SECRET=hush python3 .../receiver.py              # also checks the signature

Each callback is a POST whose body is the function's response body, with the function's
headers plus X-Call-Id, X-Function-Name, X-Function-Status (503 when the call itself failed),
X-Duration-Seconds, X-Retry and X-Retry-Max. With a signing secret (fgateway
--callback-secret-file), X-Fgateway-Signature is "sha256=" + HMAC-SHA256(secret, body) in hex.
"""

import hashlib
import hmac
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = os.environ.get("CALLBACK_SECRET", "").encode()


class Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        verdict = ""
        if SECRET:
            want = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
            got = self.headers.get("X-Fgateway-Signature", "")
            verdict = " signature ok" if hmac.compare_digest(want, got) else " BAD SIGNATURE"
        print(
            "call %s: function %s answered %s in %ss (attempt %s of %s)%s"
            % (
                self.headers.get("X-Call-Id"),
                self.headers.get("X-Function-Name"),
                self.headers.get("X-Function-Status"),
                self.headers.get("X-Duration-Seconds"),
                self.headers.get("X-Retry"),
                self.headers.get("X-Retry-Max"),
                verdict,
            )
        )
        print("  " + body.decode("utf-8", "replace").replace("\n", "\n  "))
        sys.stdout.flush()
        # Any 2xx means delivered; anything else makes fgateway try again later.
        self.send_response(200 if verdict != " BAD SIGNATURE" else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()


def main():
    port = int(os.environ.get("PORT", "9000"))
    print("receiving callbacks on http://127.0.0.1:%d/" % port)
    sys.stdout.flush()
    ThreadingHTTPServer(("127.0.0.1", port), Receiver).serve_forever()


if __name__ == "__main__":
    main()
