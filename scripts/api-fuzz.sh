#!/usr/bin/env bash
# API fuzzing: schemathesis against the live server's /openapi.json.
#
#   scripts/api-fuzz.sh [MAX_SECONDS] [MAX_EXAMPLES]     (defaults: 120, 20)
#
# Starts the debug `frenly` (FRENLY_BIN to use another build) on a free
# loopback port, plain HTTP, in a temporary data dir with loopback
# allowlisted (so the fuzzer is not rate-limited or banned), reads the first
# admin key from stderr, runs schemathesis with that key, then stops the
# server. `API_FUZZ_TOML` is appended to the server's config (for example a
# `[database]` and `[state]` section, to fuzz the PostgreSQL and Redis
# backends). Fails on any 5xx, any response that does not match its schema
# and any status code the description does not list. One worker: with two,
# hypothesis's lambda descriptions call `ast.parse` from two threads at once
# and CPython 3.11 fails that now and then ("AST constructor recursion depth
# mismatch", a schemathesis runtime error that fails the run, not a finding).
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_TIME="${1:-120}"
MAX_EXAMPLES="${2:-20}"
BIN="${FRENLY_BIN:-target/debug/frenly}"

command -v schemathesis >/dev/null || python3 -m pip install -q schemathesis
[ -x "$BIN" ] || cargo build --bin frenly

dir="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cat >"$dir/frenly.toml" <<TOML
[network]
listen = "127.0.0.1:$port"
tls = false

[limits]
allowlist = ["127.0.0.0/8"]
${API_FUZZ_TOML:-}
TOML

: >"$dir/stderr"
# FRENLY_BIN names this script's binary, not a setting: keep it (and any
# other FRENLY_* override from the caller's shell) out of the server's env
env $(env | sed -n 's/^\(FRENLY_[^=]*\)=.*/-u \1/p') "$BIN" serve --config "$dir/frenly.toml" --data-dir "$dir/data" 2>"$dir/stderr" &
pid=$!
key=""
for _ in $(seq 1 100); do
  key="$(grep -m1 -E '^frn_' "$dir/stderr" || true)"
  if [ -n "$key" ] && grep -q 'listening on' "$dir/stderr"; then break; fi
  kill -0 "$pid" 2>/dev/null || { cat "$dir/stderr" >&2; exit 1; }
  sleep 0.2
done
[ -n "$key" ] || { echo "no admin key on stderr" >&2; cat "$dir/stderr" >&2; exit 1; }

status=0
schemathesis run "http://127.0.0.1:$port/openapi.json" \
  -H "X-API-Key: $key" \
  --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
  --max-examples "$MAX_EXAMPLES" \
  --max-time "$MAX_TIME" \
  --request-timeout 10 \
  --workers 1 \
  --generation-deterministic \
  --suppress-health-check all \
  --warnings off \
  ${API_FUZZ_ARGS:-} || status=$?
if grep -qiE 'panicked|RUST_BACKTRACE' "$dir/stderr"; then
  echo "the server panicked:" >&2
  grep -iE -A5 'panicked' "$dir/stderr" >&2
  status=1
fi
exit "$status"
