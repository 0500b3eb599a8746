#!/usr/bin/env bash
# `make lint` (and the first step of `make test`): style, formatting, and the import-layer contracts.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin

echo "== ruff"
$BIN/ruff check .
$BIN/ruff format --check .
echo "== import layers (lint-imports, contracts in pyproject.toml)"
# --no-cache: a stale cache must never hide a new forbidden import.
$BIN/lint-imports --no-cache
