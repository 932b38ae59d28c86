#!/usr/bin/env python3
"""Frenly's memory figures: resident size (VmRSS) of the release server
idle, with 10,000 API keys created and each used once (so the key cache
holds them), with 100,000 distinct client addresses tracked by the rate
limiter (the default cap), and with 10,000 open WebSocket connections.

    scripts/memory.py [--keys 10000] [--addresses 100000] [--websockets 10000]
                      [--no-build] [--json OUT]

The server runs as in the load benchmark (scripts/bench.py: every layer on,
limits raised above the load, plain HTTP). Client addresses come from
`X-Forwarded-For` with the loopback peer as a trusted proxy (as behind a
load balancer), sent by wrk with a Lua counter so that exactly
`--addresses` distinct addresses arrive. WebSockets are opened with raw
sockets (the handshake by hand: no client library needed) and held open.
Each figure is cumulative: the table shows the RSS after each step and what
the step added, per item.
"""
import argparse
import base64
import http.client
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (same directory)

PORT = 9110


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")


def settle(pid, seconds=2.0):
    time.sleep(seconds)
    return rss_kib(pid)


def warm_up(f, n):
    """A few requests first, so that memory the allocator kept from start-up
    (argon2's block, the IDS compilation) is reused or returned before the
    idle figure is read."""
    conn = http.client.HTTPConnection("127.0.0.1", f.port, timeout=30)
    for _ in range(n):
        conn.request("GET", "/api/auth/whoami", headers={"X-API-Key": f.key})
        r = conn.getresponse()
        r.read()
    conn.close()


def create_keys(f, n):
    conn = http.client.HTTPConnection("127.0.0.1", f.port, timeout=30)
    hdr = {"X-API-Key": f.key, "Content-Type": "application/json"}
    keys = []
    for i in range(n):
        conn.request("POST", "/api/keys", json.dumps({"name": f"k{i}", "permissions": ["read:tasks"]}), hdr)
        r = conn.getresponse()
        body = r.read()
        if r.status != 201:
            raise SystemExit(f"key {i}: {r.status} {body[:200]!r}")
        keys.append(json.loads(body)["key"])
    # use each key once: the verified-key cache now holds them all
    for i, k in enumerate(keys):
        conn.request("GET", "/api/auth/whoami", headers={"X-API-Key": k})
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"whoami with key {i}: {r.status}")
    conn.close()


def track_addresses(f, n, key):
    script = os.path.join(tempfile.mkdtemp(prefix="frenly-mem-"), "xff.lua")
    with open(script, "w") as s:
        s.write(f"""
local n = 0
request = function()
  local i = n % {n}
  n = n + 1
  wrk.headers["X-Forwarded-For"] = string.format("10.%d.%d.%d", math.floor(i / 65536) % 256, math.floor(i / 256) % 256, i % 256)
  return wrk.format()
end
""")
    # enough time for every address at least once (checked below)
    out = subprocess.run(["taskset", "-c", "0", "wrk", "-t1", "-c16", "-d", "12", "-s", script,
                          "-H", f"X-API-Key: {key}", f"http://127.0.0.1:{f.port}/api/auth/whoami"],
                         check=True, capture_output=True, text=True).stdout
    total = 0
    for line in out.splitlines():
        if "requests in" in line:
            total = int(line.split()[0])
    if total < n:
        raise SystemExit(f"only {total} requests in 12 s: not every address was seen")
    return total


def open_websockets(f, n):
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", f.port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall((f"GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                   f"X-API-Key: {f.key}\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit(f"websocket {i}: connection closed during the handshake")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise SystemExit(f"websocket {i}: {head[:200]!r}")
        socks.append(s)
    return socks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--addresses", type=int, default=100_000)
    ap.add_argument("--websockets", type=int, default=10_000)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    bench.ensure_tools(False)
    if not args.no_build:
        bench.build()
    # the server inherits this: 10,000 sockets need more than the usual 1024
    need = args.websockets + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(need, soft), max(need, hard)))
    f = bench.Frenly(tls=False, port=PORT, network_extra='trusted_proxies = ["127.0.0.1/32"]')
    rows = []
    try:
        pid = f.proc.pid
        warm_up(f, 2000)
        base = settle(pid)
        rows.append(("idle (after start and 2,000 requests)", base, None, None))
        prev = base
        steps = [
            (f"+ {args.keys:,} API keys, each used once", args.keys, lambda: create_keys(f, args.keys)),
            (f"+ {args.addresses:,} client addresses tracked", args.addresses,
             lambda: track_addresses(f, args.addresses, f.key)),
        ]
        for label, n, run in steps:
            run()
            now = settle(pid)
            rows.append((label, now, now - prev, (now - prev) * 1024 / n if n else None))
            prev = now
        socks = open_websockets(f, args.websockets)
        now = settle(pid)
        rows.append((f"+ {args.websockets:,} open WebSockets", now, now - prev, (now - prev) * 1024 / args.websockets))
        for s in socks:
            s.close()
    finally:
        f.stop()
    print("| state | RSS MiB | added MiB | bytes per item |")
    print("|---|---|---|---|")
    for label, kib, delta, per in rows:
        print(f"| {label} | {kib / 1024:.1f} | {'' if delta is None else f'{delta / 1024:.1f}'} | "
              f"{'' if per is None else f'{per:.0f}'} |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump([{"state": r[0], "rss_kib": r[1], "added_kib": r[2], "bytes_per_item": r[3]} for r in rows], out)


if __name__ == "__main__":
    main()
