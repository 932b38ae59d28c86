#!/usr/bin/env python3
"""Frenly's load benchmark: Frenly with every layer on, its peers and a bare
hyper server, measured side by side in one run, printed as one table.

    scripts/bench.py [--duration 10] [--warmup 3] [--conns 64] [--peers DIR]
                     [--only frenly,bare,...] [--smoke] [--json OUT]

Servers are pinned to CPU 1 and wrk to CPU 0 (the peers' harness rule).
Frenly runs with API-key auth, RBAC, rate limiting and bans (limits raised far
above the load so nothing is refused, every check still runs), the IDS in
block mode, the audit log and encryption at rest, over plain HTTP; the TLS
variant of the GET runs against a second Frenly start with TLS, next to nginx
terminating TLS in front of the same upstream the nginx peers use.

Peers (from the shared peers folder, `--peers`): nginx + ModSecurity + CRS
(:9080), the plain nginx proxy (:9081), the guide's Python design (:9090) as
written and with `SEED_DDOS_IMPL=deque` (the stronger peer). Missing pieces
(wrk, nginx, the peers folder) are installed or skipped with a printed reason.

The `gateway` scenario puts Frenly (every layer on, plain HTTP) in front
of the nginx peer's upstream (:9001, 200 JSON for any path) with a gateway
route `/v1/` and measures `GET /v1/echo?q=hello` with the API key, next to
the upstream alone and nginx+ModSecurity+CRS (:9080) on the same upstream.

`--smoke` runs every Frenly scenario for one second and checks that it
answers 2xx: CI uses it to keep the benchmark working, never to time it.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import ssl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "api.frenly.test"
FRENLY_PORT = 9100
FRENLY_TLS_PORT = 9102
BARE_PORT = 9101
NGINX_TLS_PORT = 9443
PROFILE = "release"  # `--smoke` uses the debug build the test run made
FRENLY_GW_PORT = 9103
# wrk's own CPU use (percent of its core) past which a result is wrk's limit
WRK_BOUND_PCT = 95
UPSTREAM = "http://127.0.0.1:9001"
GATEWAY_ROUTE = f"""
[[gateway.routes]]
prefix = "/v1/"
upstream = "{UPSTREAM}"
permission = "write:agent"
free_text = ["messages[].content", "prompt"]
"""


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def ensure_tools(need_nginx):
    missing = [p for p, b in [("wrk", "wrk")] if not shutil.which(b)]
    if need_nginx and not shutil.which("nginx"):
        missing += ["nginx", "libnginx-mod-http-modsecurity", "modsecurity-crs"]
    if missing:
        log(f"installing {' '.join(missing)}")
        run(["apt-get", "update", "-qq"])
        run(["apt-get", "install", "-y", "-qq", *missing], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def build():
    log("building release binaries")
    run(["cargo", "build", "--release", "--bin", "frenly", "--example", "bare_hyper"], cwd=ROOT)


def wait_port(port, timeout=30):
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


class Frenly:
    def __init__(self, tls, port, extra="", network_extra=""):
        self.dir = tempfile.mkdtemp(prefix="frenly-bench-")
        self.port = port
        self.tls = tls
        cfg = os.path.join(self.dir, "frenly.toml")
        with open(cfg, "w") as f:
            f.write(f"""
[network]
listen = "127.0.0.1:{port}"
tls = {str(tls).lower()}
{network_extra}
[limits]
rate = {{ max_requests = 1000000000, window_seconds = 60 }}
ddos = {{ max_requests_per_second = 1000000000, ban_seconds = 300 }}
[ids]
mode = "block"
{extra}
""")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRENLY_")}
        self.stderr = open(os.path.join(self.dir, "stderr.log"), "w+")
        self.proc = subprocess.Popen(
            ["taskset", "-c", "1", os.path.join(ROOT, f"target/{PROFILE}/frenly"), "serve",
             "--config", cfg, "--data-dir", os.path.join(self.dir, "data")],
            stdout=subprocess.DEVNULL, stderr=self.stderr, env=env)
        # The key is printed once the port is bound (and the first admin is
        # hashed, which takes a moment): wait for the line that follows it,
        # not only for the port.
        deadline = time.time() + 30
        while "frenly: listening on" not in self.log():
            if time.time() > deadline or self.proc.poll() is not None:
                self.fail("frenly did not start")
            time.sleep(0.05)
        self.key = None
        lines = self.log().splitlines()
        for i, line in enumerate(lines):
            if "API key (shown once" in line and i + 1 < len(lines):
                self.key = lines[i + 1].strip()
        if not self.key:
            self.fail("no admin key printed")
        self.base = f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    def fail(self, why):
        """Stop the half-started server (a leftover would hold the port for
        every later run) and give up."""
        self.proc.kill()
        self.proc.wait()
        raise SystemExit(f"{why}: {self.log()}")

    def log(self):
        self.stderr.flush()
        with open(self.stderr.name) as f:
            return f.read()

    def request(self, method, path, body=None):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        req = urllib.request.Request(self.base + path, method=method, data=body,
                                     headers={"X-API-Key": self.key, "Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=ctx) as r:
            return json.loads(r.read() or b"null")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Bare:
    def __init__(self):
        self.proc = subprocess.Popen(
            ["taskset", "-c", "1", os.path.join(ROOT, f"target/{PROFILE}/examples/bare_hyper"), f"127.0.0.1:{BARE_PORT}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_port(BARE_PORT):
            raise SystemExit("bare hyper did not start")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class NginxTls:
    """nginx terminating TLS in front of the peers' upstream (:9001), with the
    same X-API-Key check as the plain nginx peer: the TLS reference."""

    def __init__(self, key_file):
        self.dir = tempfile.mkdtemp(prefix="nginx-tls-")
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{self.dir}/key.pem", "-out", f"{self.dir}/cert.pem", "-days", "2",
             "-subj", "/CN=localhost"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        key = open(key_file).read().strip()
        conf = f"""
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream app {{ server 127.0.0.1:9001; keepalive 64; }}
  server {{
    listen 127.0.0.1:{NGINX_TLS_PORT} ssl reuseport;
    ssl_certificate {self.dir}/cert.pem;
    ssl_certificate_key {self.dir}/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{
      if ($http_x_api_key != "{key}") {{ return 401; }}
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://app;
    }}
  }}
}}
"""
        with open(f"{self.dir}/nginx.conf", "w") as f:
            f.write(conf)
        run(["taskset", "-c", "1", "nginx", "-c", f"{self.dir}/nginx.conf", "-p", self.dir,
             "-g", "daemon on; user root;"], stderr=subprocess.DEVNULL)
        if not wait_port(NGINX_TLS_PORT):
            raise SystemExit("nginx TLS did not start")
        self.key = key

    def stop(self):
        try:
            pid = int(open(f"{self.dir}/nginx.pid").read())
            os.kill(pid, signal.SIGQUIT)
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
        shutil.rmtree(self.dir, ignore_errors=True)


def wrk(peers, url, args, method="GET", headers=(), body_file=None, server_pid=None, peer=None):
    cmd = [sys.executable, os.path.join(peers, "bench.py"), url, "-m", method,
           "-d", str(args.duration), "-c", str(args.conns), "--warmup", str(args.warmup)]
    for h in headers:
        cmd += ["-H", h]
    if body_file:
        cmd += ["--body-file", body_file]
    if server_pid:
        cmd += ["--server-pid", str(server_pid)]
    if peer:
        cmd += ["--peer", peer]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    log(f"{method} {url}: {res['rps']:.0f} req/s p50 {res['p50_ms']} ms p99 {res['p99_ms']} ms non2xx {res['non2xx']}")
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--peers", default=os.path.join(ROOT, "..", "shared", "peers"))
    ap.add_argument("--only", default="frenly,frenly-tls,bare,nginx,seed,seed-deque,nginx-tls,gateway")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--no-build", action="store_true", help="use the release binaries already built")
    args = ap.parse_args()
    only = set(args.only.split(","))
    peers = os.path.abspath(args.peers)
    have_peers = os.path.isfile(os.path.join(peers, "bench.py"))
    if args.smoke:
        global PROFILE
        PROFILE = "debug"
        args.duration, args.warmup, args.conns = 1, 0, 4
        only = {"frenly"}
        if not os.path.exists(os.path.join(ROOT, "target/debug/frenly")):
            run(["cargo", "build", "--bin", "frenly"], cwd=ROOT)
        args.no_build = True
    if not have_peers:
        log(f"peers folder {peers} not found: measuring Frenly and the bare server only")
        only -= {"nginx", "seed", "seed-deque", "nginx-tls", "gateway"}
    ensure_tools(bool(only & {"nginx", "nginx-tls", "gateway"}))
    if not args.no_build:
        build()
    if not have_peers:
        raise SystemExit("bench needs the peers' bench.py (wrk driver); pass --peers DIR")
    body = os.path.join(peers, "bodies", "task-1k.json")
    rows = []  # (scenario, server, result)
    os.environ.setdefault("PEERS_RUN_DIR", os.path.join(tempfile.gettempdir(), "frenly-bench-peers"))
    env = dict(os.environ)

    def record(scenario, server, res):
        rows.append({"scenario": scenario, "server": server, **res})

    if "frenly" in only:
        f = Frenly(tls=False, port=FRENLY_PORT)
        try:
            task = f.request("POST", "/api/tasks", open(body, "rb").read())
            key = [f"X-API-Key: {f.key}", f"Host: {HOST}"]
            record("GET small route", "frenly", wrk(peers, f"{f.base}/api/auth/whoami", args, headers=key, server_pid=f.proc.pid))
            record("GET task", "frenly", wrk(peers, f"{f.base}/api/tasks/{task['id']}", args, headers=key, server_pid=f.proc.pid))
            record("POST 1 KB task", "frenly", wrk(peers, f"{f.base}/api/tasks", args, "POST",
                                                   key + ["Content-Type: application/json"], body, f.proc.pid))
        finally:
            f.stop()
        if args.smoke:
            bad = [r for r in rows if r["non2xx"] or r["errors"] or not r["requests"]]
            for r in rows:
                print(f"{r['scenario']}: {r['requests']} requests, non2xx {r['non2xx']}, errors {r['errors']}")
            print(f"{len(rows) - len(bad)} passed, {len(bad)} failed")
            sys.exit(1 if bad else 0)
    if "frenly-tls" in only:
        f = Frenly(tls=True, port=FRENLY_TLS_PORT)
        try:
            record("GET small route (TLS)", "frenly", wrk(peers, f"{f.base}/api/auth/whoami", args,
                                                          headers=[f"X-API-Key: {f.key}", f"Host: {HOST}"], server_pid=f.proc.pid))
        finally:
            f.stop()
    if "bare" in only:
        b = Bare()
        try:
            record("GET small route", "bare hyper", wrk(peers, f"http://127.0.0.1:{BARE_PORT}/", args, server_pid=b.proc.pid))
        finally:
            b.stop()
    if only & {"nginx", "nginx-tls", "gateway"}:
        run([os.path.join(peers, "nginx-modsec", "start.sh")], env={**env, "BENCH": "1"}, stdout=subprocess.DEVNULL)
        try:
            h = [f"Host: {HOST}"]
            if "gateway" in only:
                scenario = "GET gateway /echo?q=hello"
                record(scenario, "upstream alone", wrk(peers, f"{UPSTREAM}/api/echo?q=hello", args, headers=h))
                f = Frenly(tls=False, port=FRENLY_GW_PORT, extra=GATEWAY_ROUTE)
                try:
                    record(scenario, "frenly gateway", wrk(peers, f"{f.base}/v1/echo?q=hello", args,
                                                           headers=h + [f"X-API-Key: {f.key}"], server_pid=f.proc.pid))
                finally:
                    f.stop()
                record(scenario, "nginx+ModSecurity+CRS", wrk(peers, "http://127.0.0.1:9080/api/echo?q=hello", args,
                                                              headers=h, peer="nginx-modsec"))
            if "nginx" in only:
                record("GET small route", "nginx+ModSecurity+CRS", wrk(peers, "http://127.0.0.1:9080/api/echo?q=hello", args, headers=h, peer="nginx-modsec"))
                record("POST 1 KB task", "nginx+ModSecurity+CRS", wrk(peers, "http://127.0.0.1:9080/api/tasks", args, "POST",
                                                                      h + ["Content-Type: application/json"], body, peer="nginx-modsec"))
                record("GET small route", "nginx plain proxy", wrk(peers, "http://127.0.0.1:9081/api/echo?q=hello", args, headers=h, peer="nginx-modsec"))
            if "nginx-tls" in only:
                keyfile = os.path.join(env["PEERS_RUN_DIR"], "nginx-modsec", "api_key")
                n = NginxTls(keyfile)
                try:
                    record("GET small route (TLS)", "nginx TLS proxy", wrk(peers, f"https://127.0.0.1:{NGINX_TLS_PORT}/api/echo?q=hello", args,
                                                                          headers=h + [f"X-API-Key: {n.key}"]))
                finally:
                    n.stop()
        finally:
            run([os.path.join(peers, "nginx-modsec", "stop.sh")], env=env, stdout=subprocess.DEVNULL)
    for variant in ["seed", "seed-deque"]:
        if variant not in only:
            continue
        venv = {**env, "BENCH": "1"}
        name = "Python guide" if variant == "seed" else "Python guide (deque)"
        if variant == "seed-deque":
            venv["SEED_DDOS_IMPL"] = "deque"
        run([os.path.join(peers, "seed-python", "start.sh")], env=venv, stdout=subprocess.DEVNULL)
        try:
            wait_port(9090)
            h = [f"Host: {HOST}"]
            created = None
            keyfile = os.path.join(env["PEERS_RUN_DIR"], "seed-python", "admin_key")
            req = urllib.request.Request("http://127.0.0.1:9090/api/tasks", method="POST", data=open(body, "rb").read(),
                                         headers={"X-API-Key": open(keyfile).read().strip(), "Content-Type": "application/json"})
            with urllib.request.urlopen(req) as r:
                created = json.loads(r.read())
            tid = created.get("id") or created.get("task", {}).get("id")
            record("GET small route", name, wrk(peers, "http://127.0.0.1:9090/api/echo", args, headers=h, peer="seed-python"))
            record("GET task", name, wrk(peers, f"http://127.0.0.1:9090/api/tasks/{tid}", args, headers=h, peer="seed-python"))
            record("POST 1 KB task", name, wrk(peers, "http://127.0.0.1:9090/api/tasks", args, "POST",
                                               h + ["Content-Type: application/json"], body, peer="seed-python"))
        finally:
            run([os.path.join(peers, "seed-python", "stop.sh")], env=env, stdout=subprocess.DEVNULL)
            time.sleep(1)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print_table(rows)


def print_table(rows):
    def find(scenario, server):
        base = scenario.replace(" (TLS)", "")
        for r in rows:
            if r["server"] == server and r["scenario"] in (scenario, base):
                return r
        return None

    refs = [("upstream", "upstream alone"), ("bare", "bare hyper"), ("guide", "Python guide"), ("deque", "Python guide (deque)"),
            ("modsec", "nginx+ModSecurity+CRS"), ("nginx-tls", "nginx TLS proxy")]
    print("| scenario | server | req/s | p50 ms | p99 ms | non-2xx | " + " | ".join(f"x {n}" for n, _ in refs) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(refs))
    for r in rows:
        ratios = []
        for _, server in refs:
            ref = find(r["scenario"], server)
            if ref is None or ref is r or not ref["rps"] or server == r["server"]:
                ratios.append("")
            elif server == "nginx TLS proxy" and "TLS" not in r["scenario"]:
                ratios.append("")
            else:
                ratios.append(f"{r['rps'] / ref['rps']:.2f}")
        print(f"| {r['scenario']} | {r['server']} | {r['rps']:.0f} | {r['p50_ms']} | {r['p99_ms']} | {r['non2xx']} | " + " | ".join(ratios) + " |")
    # A server that wrk cannot saturate from its one core shows wrk's limit,
    # not its own: a ratio to it understates how far below it the others are.
    bound = [r for r in rows if (r.get("wrk_cpu_pct") or 0) >= WRK_BOUND_PCT]
    if bound:
        print()
    for r in bound:
        print(f"wrk used {r['wrk_cpu_pct']:.0f}% of its core against {r['server']} ({r['scenario']}): "
              "that figure is the load generator's limit, and ratios to it are upper bounds.")


if __name__ == "__main__":
    main()
