"""Benchmark peer: a Python `websockets` broadcast server (asyncio, `broadcast()`).

    python server.py PORT tick SIZE        one SIZE-byte DATA_DYNAMIC-shaped message per second
    python server.py PORT flood RATE SIZE [wait]
                                           RATE event messages per second, every 10 ms
                                           (with `wait`: from the first SIGUSR2 on)
    python server.py PORT idle             nothing
"""

import asyncio
import signal
import sys
import time
import uuid

from websockets.asyncio.server import broadcast, serve

EVENTS = ["SHUTDOWN_START", "SHUTDOWN_SUCCESS", "BOOTUP_START", "BOOTUP_SUCCESS"]


def timestamp() -> str:
    """RFC 3339 UTC with nanoseconds (30 characters)."""
    ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def envelope(kind: str, body: str) -> str:
    return (
        f'{{"uuid":"{uuid.uuid4()}","type":"{kind}","body":{body},'
        f'"timestamp":"{timestamp()}"}}'
    )


async def handler(ws):
    await ws.wait_closed()


async def tick(server, size: int) -> None:
    body = '{"pad":"' + "a" * max(0, size - 120 - len("DATA_DYNAMIC")) + '"}'
    loop = asyncio.get_running_loop()
    at = loop.time()
    while True:
        at += 1.0
        await asyncio.sleep(max(0.0, at - loop.time()))
        broadcast(server.connections, envelope("DATA_DYNAMIC", body))


async def flood(server, rate: float, size: int, wait: bool) -> None:
    machines = [str(uuid.uuid4()) for _ in range(64)]
    loop = asyncio.get_running_loop()
    if wait:
        started = asyncio.Event()
        loop.add_signal_handler(signal.SIGUSR2, started.set)
        await started.wait()
    last = loop.time()
    owed = 0.0
    n = 0
    while True:
        await asyncio.sleep(0.01)
        now = loop.time()
        owed += rate * (now - last)
        last = now
        while owed >= 1.0:
            owed -= 1.0
            kind = EVENTS[n % 4]
            machine = machines[(n // 4) % 64]
            n += 1
            base = 110 + len(kind) + 47
            if size > base + 9:
                body = f'{{"uuid":"{machine}","pad":"{"a" * (size - base - 9)}"}}'
            else:
                body = f'{{"uuid":"{machine}"}}'
            broadcast(server.connections, envelope(kind, body))


async def main() -> int:
    args = sys.argv[1:]
    if len(args) < 2 or args[1] not in ("tick", "flood", "idle"):
        print("usage: server.py PORT (tick SIZE | flood RATE SIZE | idle)", file=sys.stderr)
        return 2
    port, mode = int(args[0]), args[1]
    async with serve(handler, "127.0.0.1", port, compression=None) as server:
        print(f"listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        if mode == "tick":
            await tick(server, int(args[2]))
        elif mode == "flood":
            wait = len(args) > 4 and args[4] == "wait"
            await flood(server, float(args[2]), int(args[3]), wait)
        else:
            await asyncio.Future()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
