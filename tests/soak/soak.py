#!/usr/bin/env python3
"""Soak load for an Orchard daemon (stdlib only; run by soak.sh, not in CI).

For --seconds it keeps: subscribers on /ws/machines/global and on /ws (channels, host
metrics) that read everything and reconnect now and then; consoles on running machines that
type a line every few seconds and are closed and reopened; churn (short-lived sockets, REST
logins and power actions); and, in the daemon, the simulator's own state churn. It prints
what it did; soak.sh samples the daemon.
"""

import argparse
import base64
import json
import os
import random
import socket
import struct
import sys
import threading
import time
import urllib.request

STOP = threading.Event()
COUNTS = {"messages": 0, "connects": 0, "errors": 0, "logins": 0, "actions": 0, "consoles": 0}
LOCK = threading.Lock()


def count(key, n=1):
    with LOCK:
        COUNTS[key] += n


def http(base, method, path, token=None, body=None):
    req = urllib.request.Request(base + path, method=method)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, data, timeout=30) as r:
            text = r.read()
            return r.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        return e.code, None


class Ws:
    """A minimal WebSocket client: handshake, masked text frames out, frames in, pongs."""

    def __init__(self, host, port, path):
        self.s = socket.create_connection((host, port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.s.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            head += chunk
        line = head.split(b"\r\n")[0]
        if b" 101 " not in line:
            raise ConnectionError(line.decode())
        self.buf = head.split(b"\r\n\r\n", 1)[1]
        count("connects")

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.s.sendall(head + mask + masked)

    def send_json(self, v):
        self.send(1, json.dumps(v).encode())

    def recv(self):
        """The next text message (None on close); answers pings on the way."""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(n)
            op = b0 & 0x0F
            if op == 9:
                self.send(10, payload)
            elif op == 8:
                return None
            elif op in (1, 2, 0):
                count("messages")
                return payload

    def close(self):
        try:
            self.send(8, struct.pack(">H", 1000))
        except OSError:
            pass
        self.s.close()


def token(base, password):
    status, body = http(base, "POST", "/api/auth/login", body={"username": "admin", "password": password})
    count("logins")
    if status != 200:
        raise RuntimeError(f"login failed: {status}")
    return body["access_token"]


def forever(name, body):
    """Runs `body` until the end, counting and reporting what goes wrong."""
    while not STOP.is_set():
        try:
            body()
        except (OSError, ConnectionError, RuntimeError, ValueError) as e:
            count("errors")
            print(f"{name}:", e, file=sys.stderr)
            time.sleep(1)


def read_for(ws, seconds, every=None):
    """Reads `ws` for `seconds` (or until it closes), calling `every` each ~3 s."""
    ws.s.settimeout(1)
    until = time.time() + seconds
    last = time.time()
    while not STOP.is_set() and time.time() < until:
        if every and time.time() - last > 3:
            every()
            last = time.time()
        try:
            if ws.recv() is None:
                break
        except socket.timeout:
            pass
    ws.close()


def subscriber(args, path, first=None):
    def once():
        ws = Ws(args.host, args.port, f"{path}?access_token={token(args.base, args.password)}")
        if first:
            ws.send_json(first)
        read_for(ws, random.uniform(20, 120))
    forever("subscriber", once)


def console(args, machine):
    def once():
        t = token(args.base, args.password)
        ws = Ws(args.host, args.port, f"/ws/vms/{machine}/console?token={t}")
        count("consoles")
        typed = {"type": "console_input", "timestamp": "2024-05-23T12:34:56Z",
                 "data": {"content": "root\r"}}
        read_for(ws, random.uniform(10, 60), lambda: ws.send_json(typed))
    forever("console", once)


def churn(args, machines):
    def once():
        t = token(args.base, args.password)
        for _ in range(5):
            ws = Ws(args.host, args.port, f"/ws/machines/account?access_token={t}")
            ws.recv()
            ws.close()
        ws = Ws(args.host, args.port, "/ws/machines/global?access_token=not-a-token")
        ws.recv()
        ws.close()
        http(args.base, "POST", f"/api/machines/{random.choice(machines)}/restart", t)
        count("actions")
        http(args.base, "GET", "/api/machines", t)
        STOP.wait(1)
    forever("churn", once)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=int, default=3600)
    p.add_argument("--subscribers", type=int, default=20)
    p.add_argument("--consoles", type=int, default=4)
    p.add_argument("--churners", type=int, default=2)
    args = p.parse_args()
    args.password = os.environ["ORCHARD_ADMIN_PASSWORD"]
    args.base = f"http://{args.host}:{args.port}"
    t = token(args.base, args.password)
    _, machines = http(args.base, "GET", "/api/machines", t)
    uuids = [m["uuid"] for m in machines]
    running = []
    for m in uuids[: args.consoles]:
        http(args.base, "POST", f"/api/machines/{m}/start", t)
        running.append(m)
    time.sleep(3)
    threads = []
    for i in range(args.subscribers):
        if i % 2:
            first = {"type": "subscribe", "channel": "host_metrics", "id": str(i)}
            threads.append(threading.Thread(target=subscriber, args=(args, "/ws", first)))
        else:
            threads.append(threading.Thread(target=subscriber, args=(args, "/ws/machines/global")))
    for m in running:
        threads.append(threading.Thread(target=console, args=(args, m)))
    for _ in range(args.churners):
        threads.append(threading.Thread(target=churn, args=(args, uuids[args.consoles:] or uuids)))
    for th in threads:
        th.daemon = True
        th.start()
    STOP.wait(args.seconds)
    STOP.set()
    for th in threads:
        th.join(timeout=40)
    print("load:", json.dumps(COUNTS))


if __name__ == "__main__":
    main()
