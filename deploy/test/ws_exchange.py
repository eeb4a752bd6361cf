#!/usr/bin/env python3
"""One chat exchange over Parley's WebSocket (stdlib only): sign in with
dev login, create and join a room, send a message, and see it come back as
an event. Usage: ws_exchange.py HOST PORT"""
import base64, json, os, socket, struct, sys

def send(sock, obj):
    data = json.dumps(obj).encode()
    mask = os.urandom(4)
    header = bytes([0x81])
    n = len(data)
    if n < 126:
        header += bytes([0x80 | n])
    else:
        header += bytes([0x80 | 126]) + struct.pack(">H", n)
    sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise SystemExit("connection closed")
        buf += chunk
    return buf

def recv(sock):
    while True:
        b0, b1 = read_exact(sock, 2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", read_exact(sock, 2))[0]
        elif n == 127:
            n = struct.unpack(">Q", read_exact(sock, 8))[0]
        payload = read_exact(sock, n)
        if b0 & 0x0F == 0x1:
            return json.loads(payload)
        if b0 & 0x0F == 0x8:
            raise SystemExit(f"closed by server: {payload!r}")

def until(sock, pred, what):
    for _ in range(50):
        frame = recv(sock)
        if pred(frame):
            return frame
    raise SystemExit(f"no {what}")

def main(host, port):
    sock = socket.create_connection((host, int(port)), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    if b" 101 " not in response.split(b"\r\n")[0]:
        raise SystemExit(f"upgrade refused: {response!r}")
    until(sock, lambda f: f["type"] == "hello", "hello")
    def call(i, command):
        send(sock, {**command, "id": i})
        reply = until(sock, lambda f: f["type"] == "reply" and f["id"] == i, f"reply {i}")
        if not reply["ok"]:
            raise SystemExit(f"{command['type']} failed: {reply}")
        return reply
    call(1, {"type": "auth", "dev_user": "image-test"})
    room = call(2, {"type": "room.create", "name": "image-test"})["room"]["id"]
    call(3, {"type": "room.join", "room": room})
    send(sock, {"type": "message.send", "id": 4, "room": room, "text": "hello from the image",
                "client_msg_id": "image-test-1"})
    until(sock, lambda f: f["type"] != "reply" and "hello from the image" in json.dumps(f),
          "message event")
    print("websocket exchange ok: message stored and delivered")

if __name__ == "__main__":
    main(*sys.argv[1:3])
