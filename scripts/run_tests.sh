#!/usr/bin/env bash
# The README's test command (`make test`) and CI's: lint (`make lint`: ruff + import layers), then every suite on SQLite, then
# the database-facing suites again on PostgreSQL + Redis when DATABASE_URL / REDIS_URL are set.
# Each pass ends with its 40 slowest test phases (where CI time goes).
# The PostgreSQL pass includes the real-vLLM suite (tests/inference/test_vllm_serving.py, marked
# postgres + vllm): it builds .venv-vllm with scripts/setup_vllm.sh when missing (~2 min, once).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin

./scripts/lint.sh

# The browser test of /api/docs/ (tests/security/test_swagger_browser.py) drives Debian's Chromium;
# it skips without it locally, and fails under CI=true, so CI installs it here.
if [[ "${CI:-}" == "true" && ! -x /usr/bin/chromium ]]; then
  echo "== installing Chromium for the browser test"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q chromium
fi

# The Prometheus tests (tests/observability/test_prometheus_config.py) run Debian's promtool and
# prometheus binaries; they skip without them locally and fail under CI=true, so CI installs the
# package here. Its post-install may start the packaged daemon (on :9090): stop it, the tests
# start their own Prometheus on a free port.
if [[ "${CI:-}" == "true" && ! -x /usr/bin/promtool ]]; then
  echo "== installing Prometheus (promtool) for the Prometheus tests"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends prometheus
  service prometheus stop >/dev/null 2>&1 || true
fi

# The Grafana dashboard's schema check (tests/observability/test_grafana_dashboard.py) type-checks
# deploy/grafana/tuninglab.json with tsc against Grafana's published schema package; it skips
# without them locally and fails under CI=true, so CI installs them here (pinned, from npm).
GRAFANA_SCHEMA_DIR="${GRAFANA_SCHEMA_DIR:-/opt/grafana-schema}"
if [[ "${CI:-}" == "true" && ! -d "$GRAFANA_SCHEMA_DIR/node_modules/@grafana/schema" ]]; then
  echo "== installing @grafana/schema and TypeScript for the dashboard schema check"
  npm install --prefix "$GRAFANA_SCHEMA_DIR" --no-audit --no-fund --loglevel=error @grafana/schema@13.2.3 typescript@5.9.3
fi
export GRAFANA_SCHEMA_DIR

echo "== pytest on SQLite (embedded default, in-process worker)"
# Tests marked postgres/redis need the real services; they run in the second pass.
env -u DATABASE_URL -u REDIS_URL $BIN/pytest --durations=40 -m "not postgres and not redis" "$@"

if [[ -n "${DATABASE_URL:-}" ]]; then
  echo "== pytest on PostgreSQL ($DATABASE_URL) + Redis (${REDIS_URL:-none})"
  # Engine tests (tests/lora_engine) do not touch the database or the broker, nor does the
  # browser test of the API docs; they ran above.
  # The browser tests of the pages, playground and admin ran above on SQLite too (the same page
  # code paths run against PostgreSQL here in tests/webui, tests/playground, tests/security), as
  # did the engine benchmarks' smoke runs (no database).
  # Tests marked `embedded` (costly runs of the embedded default: in-process worker, live server)
  # ran above; their Celery + PostgreSQL counterparts run here.
  # --database-tests-only (tests/conftest.py): a test with no database fixture and no postgres,
  # redis or django_db mark ran the same code above, so it is deselected here.
  $BIN/pytest --durations=40 -m "not embedded" --database-tests-only --ignore=tests/lora_engine --ignore=tests/security/test_swagger_browser.py \
    --ignore=tests/browser --ignore=tests/webui/test_browser.py --ignore=tests/playground/test_browser.py \
    --ignore=tests/benchmarks/test_lora_layer.py --ignore=tests/benchmarks/test_train_step.py \
    --ignore=tests/benchmarks/test_distributed.py "$@"
elif [[ "${CI:-}" == "true" ]]; then
  echo "CI=true but DATABASE_URL is not set: the PostgreSQL + Redis suites must run in CI" >&2
  exit 1
else
  echo "== skipped the PostgreSQL + Redis pass (set DATABASE_URL and REDIS_URL to run it)"
fi
