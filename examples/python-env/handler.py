#!/usr/bin/env python3
"""Answers with JSON describing the request, read from the Http_* variables fwatchdog sets.

Every request header arrives as Http_<Name> (X-Request-Id -> Http_X_Request_Id); the method,
path and query arrive as Http_Method, Http_Path and Http_Query. The body is on stdin.
Only the standard library is used.
"""

import json
import os
import sys
from urllib.parse import parse_qs

RESERVED = {"Http_Method", "Http_Path", "Http_Query", "Http_ContentLength", "Http_Transfer_Encoding"}


def main() -> None:
    body = sys.stdin.buffer.read()
    query = parse_qs(os.environ.get("Http_Query", ""))
    headers = {
        key[len("Http_"):]: value
        for key, value in sorted(os.environ.items())
        if key.startswith("Http_") and key not in RESERVED
    }
    name = query.get("name", ["world"])[0]
    reply = {
        "greeting": f"Hello, {name}!",
        "method": os.environ.get("Http_Method"),
        "path": os.environ.get("Http_Path"),
        "query": {k: v if len(v) > 1 else v[0] for k, v in query.items()},
        "headers": headers,
        "body_bytes": len(body),
    }
    json.dump(reply, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
