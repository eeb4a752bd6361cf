#!/usr/bin/env python3
"""Receives Parley webhooks and verifies each one before trusting it.

Every POST carries:
    Parley-Timestamp: <Unix seconds of the attempt>
    Parley-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>
    Idempotency-Key:  <the delivery's id, the same on every retry>
    Parley-Event:     room.event | notification.offline

The recipe: recompute the HMAC over the raw body bytes (not re-serialised
JSON), compare in constant time, refuse timestamps more than five minutes
from now (replays), and drop a key already processed (retries: delivery is
at least once). Answer 2xx only once the event is safely handled; anything
else is retried with backoff.

    PARLEY_WEBHOOK_SECRET=... python3 docs/examples/webhook_receiver.py --port 8099
"""

import argparse
import hashlib
import hmac
import http.server
import json
import os
import sys
import time

TOLERANCE_S = 300


def verify(secret: bytes, timestamp: str, signature: str, body: bytes) -> bool:
    try:
        signed_at = int(timestamp)
    except ValueError:
        return False
    if abs(time.time() - signed_at) > TOLERANCE_S:
        return False
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest("v1=" + mac.hexdigest(), signature)


def handler(secret: bytes, processed: set, limit: int):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            timestamp = self.headers.get("Parley-Timestamp", "")
            signature = self.headers.get("Parley-Signature", "")
            if not verify(secret, timestamp, signature, body):
                print(json.dumps({"rejected": self.headers.get("Idempotency-Key")}), flush=True)
                self.send_response(401)
                self.end_headers()
                return
            key = self.headers["Idempotency-Key"]
            if key not in processed:
                # Handle it (here: print it), then remember the key.
                payload = json.loads(body)
                print(json.dumps({"verified": key, "payload": payload}), flush=True)
                processed.add(key)
            self.send_response(204)
            self.end_headers()
            if limit and len(processed) >= limit:
                self.server.done = True

        def log_message(self, *args):
            pass

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--max-requests", type=int, default=0, help="exit after this many (0: never)")
    args = parser.parse_args()
    secret = os.environ["PARLEY_WEBHOOK_SECRET"].encode()
    processed = set()
    server = http.server.HTTPServer(("127.0.0.1", args.port), handler(secret, processed, args.max_requests))
    server.done = False
    while not server.done:
        server.handle_request()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
