#!/usr/bin/env python3
"""Instructions per request: Frenly under callgrind, N requests of one kind.

    scripts/instructions.py [small|task|post] [N] [--out FILE] [--no-build]

Wall-clock figures on a shared 2-vCPU VM move 10-30% between runs; counted
instructions do not (valgrind counts them, whatever else the machine does).
Frenly starts under `valgrind --tool=callgrind` with the benchmark's
configuration (every layer on, limits raised, IDS in block mode, plain
HTTP, SQLite), takes 300 requests of the kind to warm up, then counts N
requests sent by 8 concurrent keep-alive clients (so the group writer
batches as it does under load), waits for the audit and SQLite writers to
finish, and dumps. Prints the total per request, the share of SHA-256 (which
valgrind runs in software: it hides SHA-NI, so that share is far above the
real one) and Frenly's writer threads per request; `callgrind_annotate
--inclusive=yes FILE` shows the rest.
"""
import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORT = 9200


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", nargs="?", default="small", choices=["small", "task", "post"])
    ap.add_argument("n", nargs="?", type=int, default=2000)
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "--bin", "frenly"], cwd=ROOT, check=True)
    out = a.out or os.path.join(tempfile.mkdtemp(prefix="frenly-cg-"), f"callgrind-{a.kind}.out")
    d = tempfile.mkdtemp(prefix="frenly-cg-")
    with open(f"{d}/frenly.toml", "w") as f:
        f.write(f"""
[network]
listen = "127.0.0.1:{PORT}"
tls = false
[limits]
rate = {{ max_requests = 1000000000, window_seconds = 60 }}
ddos = {{ max_requests_per_second = 1000000000, ban_seconds = 300 }}
[ids]
mode = "block"
""")
    err = open(f"{d}/stderr.log", "w+")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRENLY_")}
    p = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                          f"{ROOT}/target/release/frenly", "serve", "--config", f"{d}/frenly.toml",
                          "--data-dir", f"{d}/data"], stdout=subprocess.DEVNULL, stderr=err, env=env)

    def log():
        err.flush()
        with open(err.name) as f:
            return f.read()

    t0 = time.time()
    while "frenly: listening on" not in log():
        if time.time() - t0 > 300 or p.poll() is not None:
            p.kill()
            sys.exit(f"frenly did not start under valgrind:\n{log()}")
        time.sleep(0.2)
    lines = log().splitlines()
    key = next(lines[i + 1].strip() for i, l in enumerate(lines) if "API key (shown once" in l)
    local = threading.local()
    headers = {"X-API-Key": key, "Content-Type": "application/json", "Host": "api.frenly.test"}
    body = json.dumps({"title": "bench task", "description": "x" * 1000})

    def req(method, path, b=None):
        if not hasattr(local, "c"):
            local.c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
        local.c.request(method, path, body=b, headers=headers)
        r = local.c.getresponse()
        data = r.read()
        if r.status >= 300:
            raise SystemExit(f"{method} {path}: {r.status} {data[:200]!r}")
        return data

    tid = json.loads(req("POST", "/api/tasks", body))["id"]

    def one():
        if a.kind == "small":
            req("GET", "/api/auth/whoami")
        elif a.kind == "task":
            req("GET", f"/api/tasks/{tid}")
        else:
            req("POST", "/api/tasks", body)

    for _ in range(300):
        one()
    time.sleep(1)
    ctl = lambda *args: subprocess.run(["callgrind_control", *args, str(p.pid)], check=True,
                                       stdout=subprocess.DEVNULL)
    ctl("-i", "on")
    workers = [threading.Thread(target=lambda: [one() for _ in range(a.n // 8)]) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    time.sleep(1.5)  # the audit and SQLite writers finish their batches
    ctl("-i", "off")
    ctl("-d")
    time.sleep(1)
    p.terminate()
    p.wait()
    n = (a.n // 8) * 8
    dumps = sorted(f for f in os.listdir(os.path.dirname(out)) if f.startswith(os.path.basename(out) + "."))
    dump = os.path.join(os.path.dirname(out), dumps[0]) if dumps else out
    report(dump, n, a.kind)


def report(dump, n, kind):
    def annotate(*args):
        return subprocess.run(["callgrind_annotate", *args, dump], capture_output=True, text=True).stdout

    def ir(line):
        return int(line.split()[0].replace(",", ""))

    total = next(ir(l) for l in annotate().splitlines() if "PROGRAM TOTALS" in l)
    sha = sum(ir(l) for l in annotate().splitlines() if "sha256::soft::compress" in l)
    incl = annotate("--inclusive=yes").splitlines()

    def incl_of(suffix):
        return max((ir(l) for l in incl if l.rstrip().endswith(suffix)), default=0)

    print(f"{kind}: {n} requests, {dump}")
    print(f"  instructions per request, all threads: {total // n:,}")
    print(f"  of which SHA-256 in software (valgrind hides SHA-NI): {sha // n:,}")
    print(f"  SQLite group writer: {incl_of('frenly::store::group::run') // n:,}")
    print(f"  SQLite checkpointer: {incl_of('frenly::store::group::checkpointer') // n:,}")


if __name__ == "__main__":
    main()
