#!/usr/bin/env bash
# The whole test suite: unit and integration tests on SQLite, then the
# integration suite again on PostgreSQL. Suites whose service (PostgreSQL at
# 127.0.0.1:5432, Redis at 127.0.0.1:6379) is unreachable are skipped with a
# printed reason, unless CI_REQUIRE_SERVICES=1 (CI), where they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

# the interop tests run Python's cryptography (Fernet) and PyJWT
python3 -c "import cryptography, jwt" 2>/dev/null || python3 -m pip install -q cryptography PyJWT

cargo nextest run --workspace --no-fail-fast "$@"

if pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  echo "== integration suite on PostgreSQL (TEST_DB=postgres)"
  TEST_DB=postgres cargo nextest run --no-fail-fast -E 'binary(it)' "$@"
elif [ "${CI_REQUIRE_SERVICES:-0}" = 1 ]; then
  echo "PostgreSQL is required (CI_REQUIRE_SERVICES=1) but unreachable" >&2
  exit 1
else
  echo "SKIPPED: the PostgreSQL run of the integration suite (no server at 127.0.0.1:5432)"
fi
