#!/usr/bin/env bash
# The README's test command (`make test`) and CI's: lint, then every suite on SQLite, then
# the database-facing suites again on PostgreSQL + Redis when DATABASE_URL / REDIS_URL are set.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin

echo "== ruff"
$BIN/ruff check .
$BIN/ruff format --check .

echo "== pytest on SQLite (embedded default)"
env -u DATABASE_URL -u REDIS_URL $BIN/pytest "$@"

if [[ -n "${DATABASE_URL:-}" ]]; then
  echo "== pytest on PostgreSQL ($DATABASE_URL) + Redis (${REDIS_URL:-none})"
  # Engine tests do not touch the database; they ran above.
  $BIN/pytest --ignore=tests/engine "$@"
fi
