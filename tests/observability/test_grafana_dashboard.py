"""``deploy/grafana/tuninglab.json``: a dashboard Grafana imports as it is, whose every query
names only metrics that exist.

* Schema: the dashboard is type-checked with ``tsc`` against Grafana's own published types
  (the npm package ``@grafana/schema``: ``Dashboard``, and each panel plugin's ``Options`` /
  ``FieldConfig``), written as an object literal so TypeScript also rejects unknown keys.
  Grafana itself is not installable here (not in Debian, no downloads outside the registries).
  Without ``tsc`` and the package (``GRAFANA_SCHEMA_DIR``, default ``/opt/grafana-schema``) the
  test skips locally and fails under ``CI=true``; CI installs them with::

      npm install --prefix /opt/grafana-schema --no-audit --no-fund @grafana/schema@13.2.3 typescript@5.9.3

* Metric names: every PromQL expression of every panel and variable is parsed for metric
  names; each must be in a live scrape of the app's ``/metrics`` and of a worker's metrics port
  (with a job training on the scripted fake engine, checkpoints included), or be one of vLLM's
  metrics listed in ``VLLM_METRICS`` (vLLM is another process: a scrape of it needs its own
  virtualenv and ~75 s; the names are checked against the installed vLLM's source when
  ``.venv-vllm`` exists).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connections
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import skip_or_fail_in_ci, wait_until
from tunings.models import TuningJob
from workers import celery_metrics
from workers.runner import run_job

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "tuninglab.json"
SCHEMA_DIR = Path(os.environ.get("GRAFANA_SCHEMA_DIR", "/opt/grafana-schema"))
INSTALL = "npm install --prefix /opt/grafana-schema --no-audit --no-fund @grafana/schema@13.2.3 typescript@5.9.3"
VLLM_SOURCE = (
    REPO_ROOT / ".venv-vllm" / "lib" / "python3.11" / "site-packages" / "vllm" / "v1" / "metrics" / "loggers.py"
)

# vLLM's own /metrics (the `vllm` scrape job): not produced by this app. Each with where vLLM
# defines it (vllm/v1/metrics/loggers.py, PrometheusStatLogger) and what kind it is; counters and
# histograms are exposed with prometheus_client's suffixes.
VLLM_METRICS = {
    "vllm:num_requests_running": "gauge: requests in the model's running batch",
    "vllm:num_requests_waiting": "gauge: requests waiting to be scheduled",
    "vllm:kv_cache_usage_perc": "gauge: share of KV cache blocks in use (1 = full)",
    "vllm:prompt_tokens_total": "counter vllm:prompt_tokens: prefill tokens processed",
    "vllm:generation_tokens_total": "counter vllm:generation_tokens: tokens generated",
    "vllm:time_to_first_token_seconds_bucket": "histogram vllm:time_to_first_token_seconds",
    "vllm:e2e_request_latency_seconds_bucket": "histogram vllm:e2e_request_latency_seconds",
    "vllm:lora_requests_info": "gauge: running/waiting LoRA adapters as labels, value a timestamp",
}

# Grafana's core panel plugins used here → their module in @grafana/schema (Options, FieldConfig?).
PANEL_SCHEMAS = {
    "timeseries": ("TimeSeriesPanelCfg", True),
    "stat": ("StatPanelCfg", False),
    "bargauge": ("BarGaugePanelCfg", False),
    "table": ("TablePanelCfg", True),
}

# What the dashboard must show (docs/observability.md's panel list), by a metric it must query.
REQUIRED_METRICS = {
    "jobs by status and queue": "tuninglab_jobs",
    "queue wait": "tuninglab_queue_wait_seconds",
    "loss curves": "tuninglab_job_loss",
    "learning rate": "tuninglab_job_learning_rate",
    "throughput": "tuninglab_job_tokens_per_second",
    "progress": "tuninglab_job_progress_ratio",
    "ETA": "tuninglab_job_eta_seconds",
    "heartbeat age": "tuninglab_job_heartbeat_age_seconds",
    "checkpoint write time": "tuninglab_worker_checkpoint_write_seconds_bucket",
    "failures by code": "tuninglab_failed_jobs",
    "worker tasks": "tuninglab_worker_tasks_failed_total",
    "task duration": "tuninglab_worker_task_duration_seconds_bucket",
    "jobs per worker": "tuninglab_worker_jobs_running",
    "memory": "process_resident_memory_bytes",
    "training children memory": "tuninglab_worker_descendants_resident_memory_bytes",
    "latency per adapter": "tuninglab_gateway_request_seconds_bucket",
    "time to first token": "tuninglab_gateway_first_token_seconds_bucket",
    "tokens per version": "tuninglab_inference_tokens_total",
    "A/B split served": "tuninglab_inference_requests_total",
    "A/B route weights": "tuninglab_route_weight",
    "gateway errors": "tuninglab_inference_errors_total",
    "HTTP error rates": "django_http_responses_total_by_status_view_method_total",
    "HTTP latency": "django_http_requests_latency_seconds_by_view_method_bucket",
    "vLLM": "vllm:num_requests_running",
}

PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "atan2",
}  # fmt: skip


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets and query variables."""
    exprs = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana ``label_values`` query) reads."""
    label_values = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*\w+\s*\)\s*", expr)
    if label_values:
        return {label_values.group(1)}
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)  # Grafana variables ($__rate_interval)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", text):
        if match.group(1).lower() not in PROMQL_KEYWORDS:
            names.add(match.group(1))
    return names


def exposed_names(text: str) -> set[str]:
    """Every series name a scrape can answer: its samples' names, and each family's names by type
    (a labelled family without samples yet is still listed by HELP/TYPE)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("_count", "_sum", "_created"),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


# --- the expression parser ---------------------------------------------------------------------


def test_the_metric_name_parser_skips_functions_labels_ranges_and_variables() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, model) (rate(a_bucket{status=~"5..", x="b_total"}[$__rate_interval])))'
        " / on (model) group_left sum without (job) (vllm:c_total offset 5m) > bool 1e-4"
    )
    assert metric_names(expr) == {"a_bucket", "vllm:c_total"}
    assert metric_names("label_values(tuninglab_jobs, queue)") == {"tuninglab_jobs"}
    assert metric_names("sum(rate(x_total[5m])) and y") == {"x_total", "y"}


# --- structure ---------------------------------------------------------------------------------


def test_it_is_an_importable_dashboard_with_a_prometheus_datasource_variable() -> None:
    dashboard = load()
    assert (dashboard["title"], dashboard["uid"]) == ("LLM Tuning Lab", "tuninglab-overview")
    assert dashboard["schemaVersion"] >= 39  # Grafana 11+; the schema test pins the current one
    assert dashboard["id"] is None  # an import creates it; a fixed id would overwrite another dashboard
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    every = list(panels(dashboard))
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids))
    used = {(v["datasource"]["type"], v["datasource"]["uid"]) for v in variables.values() if "datasource" in v}
    for panel in every:
        if panel["type"] == "row":
            continue
        assert panel["type"] in PANEL_SCHEMAS, panel["title"]
        assert panel["description"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(refs) == len(set(refs)), panel["title"]
        used |= {(d["type"], d["uid"]) for d in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]}
    assert used == {("prometheus", "${datasource}")}  # nothing points at a datasource of one Grafana


def test_its_panels_tile_the_24_column_grid_without_overlapping() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(load()):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_it_has_a_panel_for_everything_the_docs_list() -> None:
    queried = set().union(*(metric_names(e) for e in expressions(load())))
    missing = {topic: name for topic, name in REQUIRED_METRICS.items() if name not in queried}
    assert not missing


# --- Grafana's schema --------------------------------------------------------------------------


def typescript_source(dashboard: dict[str, Any]) -> str:
    """The dashboard and each panel's options as object literals typed with @grafana/schema."""
    lines = [
        'import type { Dashboard } from "@grafana/schema";',
        *(
            f'import type * as {module} from "@grafana/schema/dist/esm/raw/composable/{kind}/panelcfg/x/'
            f'{module}_types.gen";'
            for kind, (module, _) in PANEL_SCHEMAS.items()
        ),
        "",
        "// JSON has no enums: every string enum of the schema as the union of its values.",
        "type Json<T> = T extends string ? `${T}` : T extends readonly (infer U)[] ? Json<U>[]",
        "  : T extends object ? { [K in keyof T]: Json<T[K]> } : T;",
        "",
        f"export const dashboard: Json<Dashboard> = {json.dumps(dashboard, indent=2)};",
    ]
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        module, has_field_config = PANEL_SCHEMAS[panel["type"]]
        custom = panel["fieldConfig"]["defaults"].get("custom")
        custom_type = f"Json<{module}.FieldConfig>" if has_field_config else "Record<string, never>"
        lines.append(
            f"export const panel{panel['id']}: {{ options: Json<{module}.Options>; custom?: {custom_type} }} = "
            f"{json.dumps({'options': panel.get('options', {}), **({'custom': custom} if custom else {})})};"
        )
    return "\n".join(lines) + "\n"


def typecheck(source: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    tsc = SCHEMA_DIR / "node_modules" / ".bin" / "tsc"
    if not tsc.exists() or not (SCHEMA_DIR / "node_modules" / "@grafana" / "schema").is_dir():
        skip_or_fail_in_ci(f"needs tsc and @grafana/schema in {SCHEMA_DIR} ({INSTALL})")
    (workdir / "node_modules").symlink_to(SCHEMA_DIR / "node_modules")
    (workdir / "dashboard.ts").write_text(source)
    options = {
        "strict": True,
        "noEmit": True,
        "module": "esnext",
        "moduleResolution": "bundler",
        "target": "es2022",
        "skipLibCheck": True,
        "types": [],
    }
    (workdir / "tsconfig.json").write_text(json.dumps({"compilerOptions": options, "files": ["dashboard.ts"]}))
    return subprocess.run(
        [str(tsc), "-p", str(workdir / "tsconfig.json")], capture_output=True, text=True, timeout=300, cwd=workdir
    )


@pytest.mark.timeout(300)
def test_it_type_checks_against_grafanas_published_dashboard_and_panel_schemas(tmp_path: Path) -> None:
    dashboard = load()
    result = typecheck(typescript_source(dashboard), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # The schema version the installed Grafana schema writes for a new dashboard (current Grafana's).
    defaults = (SCHEMA_DIR / "node_modules/@grafana/schema/dist/esm/raw/dashboard/x/types.gen.mjs").read_text()
    current = re.search(r"schemaVersion: (\d+)", defaults)
    assert current and dashboard["schemaVersion"] == int(current.group(1))


@pytest.mark.timeout(300)
def test_the_schema_check_rejects_a_misspelt_key_a_wrong_type_and_bad_panel_options(tmp_path: Path) -> None:
    dashboard = load()
    dashboard["schemaVersion"] = "39"
    dashboard["panels"][1]["gridpos"] = dashboard["panels"][1].pop("gridPos")
    timeseries = next(p for p in panels(dashboard) if p["type"] == "timeseries")
    timeseries["options"]["legend"]["placement"] = "middle"
    result = typecheck(typescript_source(dashboard), tmp_path)
    errors = [line for line in result.stdout.splitlines() if ": error TS" in line]
    assert result.returncode != 0 and len(errors) == 3, result.stdout
    expected = (
        "Type 'string' is not assignable to type 'number'",  # schemaVersion
        "'\"gridpos\"' does not exist",
        "Type '\"middle\"' is not assignable to type 'LegendPlacement'",
    )
    for message in expected:
        assert any(message in error for error in errors), message


# --- metric names ------------------------------------------------------------------------------


def scrape_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


@pytest.fixture
def worker_port():
    port = celery_metrics.start_worker_metrics_server(0)
    yield f"http://127.0.0.1:{port}/metrics"
    celery_metrics.stop_worker_metrics_server()


@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True)
def test_every_metric_the_dashboard_queries_is_served_by_the_app_or_a_worker_or_is_vllms(
    worker_port, fake_engine, make_job, user, settings
):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "PROGRESS_WRITE_SECONDS": 0.05}
    fake_engine([{"train": {"steps": 400, "delay": 0.02, "checkpoint_every": 10}}, {"adapter": True}, {"done": True}])
    job = make_job(user)
    make_job(user, status=TuningJob.Status.FAILED, error={"code": "out_of_memory"})

    def target() -> None:
        try:
            run_job(job.id, worker_id="w1", queue="cpu")
        finally:
            connections.close_all()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    # A checkpoint was written (step 10) and the job still runs: its gauges are in the scrape.
    assert wait_until(lambda: TuningJob.objects.get(id=job.id).current_step >= 20, timeout=60)
    Client().get("/metrics")  # a first response, so the scrape below has django's per-status counters
    response = Client().get("/metrics")
    served = exposed_names(response.content.decode()) | exposed_names(scrape_text(worker_port))
    thread.join(timeout=90)
    assert not thread.is_alive()

    queried = set().union(*(metric_names(e) for e in expressions(load())))
    unknown = sorted(name for name in queried if name not in served and name not in VLLM_METRICS)
    assert not unknown, f"the dashboard queries metrics nothing serves: {unknown}"
    assert set(VLLM_METRICS) <= queried  # no stale entries
    assert "tuninglab_job_loss" in served and "tuninglab_worker_checkpoint_write_seconds_bucket" in served


def test_the_vllm_metrics_it_queries_are_defined_by_the_installed_vllm() -> None:
    if not VLLM_SOURCE.exists():
        pytest.skip(f"vLLM is not installed here ({VLLM_SOURCE}; scripts/setup_vllm.sh builds it)")
    source = VLLM_SOURCE.read_text()
    for name in VLLM_METRICS:
        base = re.sub(r"_(total|bucket)$", "", name)
        assert f'name="{base}"' in source, name
