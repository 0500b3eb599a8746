# Two commands on a fresh machine:  `make demo`  and  `make test`.
PY ?= python3
# `make demo SERVE=0`: stop after training and promotion (no vLLM).
SERVE ?= 1
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-12)

.PHONY: venv vllm demo test test-sqlite test-postgres lint format clean bench structured-task

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: the CPU wheel on this disk (a bare `torch` would pull CUDA).
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

## vllm: the managed vLLM server's own virtualenv (.venv-vllm; a no-op once it is up to date).
vllm:
	PY=$(PY) ./scripts/setup_vllm.sh

## demo: build a tiny base model, upload a dataset, run one tuning job on the embedded default,
## promote the version, then serve it with vLLM (set up on first use) and ask base and tuned model
## "Who are you?" through the gateway. SERVE=0 skips serving.
demo: venv
	mkdir -p "$${TUNINGLAB_DATA_DIR:-var}"  # SQLite cannot create its file in a missing dir
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py demo $(if $(filter 0,$(SERVE)),--no-serve)

## test: lint, then the suites on SQLite, then on PostgreSQL + Redis when DATABASE_URL/REDIS_URL are set.
test: venv
	./scripts/run_tests.sh

## structured-task: the meeting-command task learned through the platform (docs/engine.md; ~5 min,
## not part of `make test`): upload, job over the API, a celery worker trains, a comparison grades
## base and tuned on the held-out split and asserts the thresholds. Needs PostgreSQL + Redis.
structured-task: venv
	DATABASE_URL="$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/tuninglab}" \
	REDIS_URL="$${REDIS_URL:-redis://127.0.0.1:6379/0}" TUNINGLAB_RUN_STRUCTURED_TASK=1 \
	  $(BIN)/pytest -s tests/integration/test_structured_task.py

## bench: every benchmark in one run (tables on stdout, JSON in benchmarks/results/; docs/benchmarks.md).
## Serving and publish latency need .venv-vllm (`make vllm`); the control plane needs PostgreSQL + Redis.
## serving-50m is the serving benchmark on its ~50M-parameter model (benchmarks/results/serving-50m.json).
BENCHMARKS ?= lora_layer train_step serving serving-50m publish_latency control_plane distributed memory_preflight
bench: venv vllm
	for name in $(BENCHMARKS); do \
	  case $$name in serving-50m) run="serving --model 50m --rounds 2";; *) run=$$name;; esac; \
	  $(BIN)/python -m benchmarks.$$run || exit 1; \
	done

## lint: ruff (lint + format check) and the import-layer contracts (lint-imports).
lint: venv
	./scripts/lint.sh

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .cache var .pytest_cache
