"""Benchmark: adapter publish latency, from ``promote`` to the first answer of the new version.

The stack is the serving benchmark's (``benchmarks.serving.serving_stack``): a fresh PostgreSQL
database, Redis, ``manage.py serve_inference`` (vLLM on the tiny model) and the gateway under
gunicorn with production settings.

One model ``pub`` has a version per repeat (random-init PEFT adapters, rank 8, all linear
layers). Other models ``k0``, ``k1``, ... are promoted first so that 1, 8 and 32 adapters are
already loaded in vLLM (the loaded count is read from vLLM's ``/v1/models`` at each promote).
Each repeat:

1. ``POST /v1/models/pub/promote {"version": n}`` through the gateway (the public API; the
   clock starts before it is sent);
2. chat requests for ``pub`` one after the other (1 token each) until one is answered by
   version n. Which version answered comes from the registry's live counters
   (``VersionTraffic``, written before the gateway returns the answer): the first request after
   which version n's count is 1 is the first answer of version n.

The latency is that answer's arrival minus the start of the promote; the promote call's own
latency is kept apart. The vLLM server's pid and restart count are read before and after: a
publish must not restart vLLM.

Run: ``.venv/bin/python -m benchmarks.publish_latency [--quick]``. Prints a table and writes
``benchmarks/results/publish_latency.json``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from benchmarks.common import machine, summary, table, write_result
from benchmarks.serving import (
    BASE_NAME,
    ServingStack,
    serving_stack,
    tiny_model,
    version_spec,
    write_random_adapter,
)

PUBLISHED = "pub"
POLL_TIMEOUT_S = 60.0


def _requests_of(stack: ServingStack, version_id: str) -> int:
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute(
            "SELECT requests FROM registry_versiontraffic WHERE version_id = %s", [version_id]
        ).fetchone()
    return int(row[0]) if row else 0


def publish_once(stack: ServingStack, client: httpx.Client, number: int) -> dict[str, Any]:
    """Promote ``pub`` to version ``number`` and time the first answer that version gives."""
    version_id = stack.versions[PUBLISHED][number - 1]
    loaded = stack.loaded_adapters()
    body = {
        "model": PUBLISHED,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 1,
        "temperature": 0,
    }
    started = time.perf_counter()
    promote = client.post(f"/v1/models/{PUBLISHED}/promote", json={"version": number})
    promoted = time.perf_counter()
    if promote.status_code != 200:
        raise RuntimeError(f"promote: {promote.status_code} {promote.text[:500]}")
    polls = 0
    errors = 0
    while True:
        reply = client.post("/v1/chat/completions", json=body)
        answered = time.perf_counter()
        polls += 1
        if reply.status_code != 200:
            errors += 1
        elif _requests_of(stack, version_id) >= 1:
            break
        if answered - started > POLL_TIMEOUT_S:
            raise RuntimeError(f"version {number} did not answer within {POLL_TIMEOUT_S}s: {reply.text[:300]}")
    return {
        "version": number,
        "adapters_loaded_before": len(loaded),
        "new_version_was_loaded": version_id in loaded,
        "promote_ms": (promoted - started) * 1000,
        "publish_to_answer_ms": (answered - started) * 1000,
        "polls": polls,
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 and 8 loaded, 2 repeats")
    parser.add_argument("--loaded", type=int, nargs="+", default=[1, 8, 32], help="adapters loaded before")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432", help="PostgreSQL server URL")
    parser.add_argument("--database", default="tl_bench_publish", help="dropped and created afresh for the run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    loaded_steps = [1, 8] if args.quick else sorted(args.loaded)
    repeats = 2 if args.quick else args.repeats
    others = max(loaded_steps)
    info = machine()
    wall_started = time.monotonic()
    model_dir = tiny_model()
    work_dir = Path(tempfile.mkdtemp(prefix="tl-bench-publish-"))
    # Every adapter stays in vLLM's CPU cache: the others, the published versions, one spare.
    max_cpu_loras = others + len(loaded_steps) * repeats + 2
    env_extra = {"TUNINGLAB_VLLM_MAX_CPU_LORAS": str(max_cpu_loras)}
    results: list[dict[str, Any]] = []
    try:
        published = [
            write_random_adapter(work_dir / f"pub-{i}", model_dir, seed=1000 + i)
            for i in range(1 + len(loaded_steps) * repeats)
        ]
        kept = [write_random_adapter(work_dir / f"k-{i}", model_dir, seed=i) for i in range(others)]
        first = loaded_steps[0]
        versions = [version_spec(PUBLISHED, path) for path in published]
        versions += [version_spec(f"k{i}", kept[i]) for i in range(first)]
        # v1 of pub is served from the start; the first step's others are loaded with it.
        with serving_stack(
            pg=args.pg,
            database=args.database,
            versions=versions,
            promote=[PUBLISHED, *[f"k{i}" for i in range(first)]],
            model_dir=model_dir,
            work_dir=work_dir,
            env_extra=env_extra,
        ) as stack:
            row_before = stack.serving_row()
            setup_s = time.monotonic() - wall_started
            headers = {"Authorization": f"Bearer {stack.api_key}"}
            with httpx.Client(base_url=stack.gateway_url, headers=headers, timeout=120) as client:
                number = 1
                have = first
                for step in loaded_steps:
                    if step > have:
                        names = [f"k{i}" for i in range(have, step)]
                        ids = stack.seed([version_spec(n, kept[int(n[1:])]) for n in names], promote=names)
                        stack.wait_loaded({ids[n][0] for n in names})
                        have = step
                    for _ in range(repeats):
                        number += 1
                        time.sleep(1.0)  # let the previous publish's reconcile pass settle
                        outcome = publish_once(stack, client, number)
                        results.append({"others_loaded": step, **outcome})
                        print(
                            f"{step:>3} others loaded ({outcome['adapters_loaded_before']} adapters): "
                            f"v{number} answered after {outcome['publish_to_answer_ms']:.0f} ms "
                            f"(promote {outcome['promote_ms']:.0f} ms, {outcome['polls']} requests)"
                        )
            row_after = stack.serving_row()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    rows = []
    for step in loaded_steps:
        runs = [r for r in results if r["others_loaded"] == step]
        rows.append(
            {
                "others_loaded": step,
                "adapters_loaded": summary([r["adapters_loaded_before"] for r in runs])["median"],
                "publish_to_answer_ms": summary([r["publish_to_answer_ms"] for r in runs]),
                "promote_ms": summary([r["promote_ms"] for r in runs]),
                "polls": summary([r["polls"] for r in runs]),
                "errors": sum(r["errors"] for r in runs),
            }
        )
    flat = [
        {
            "others": r["others_loaded"],
            "loaded": r["adapters_loaded"],
            "p50": r["publish_to_answer_ms"]["median"],
            "min": r["publish_to_answer_ms"]["min"],
            "max": r["publish_to_answer_ms"]["max"],
            "promote": r["promote_ms"]["median"],
            "polls": r["polls"]["median"],
            "errors": r["errors"],
        }
        for r in rows
    ]
    print(
        table(
            flat,
            [
                ("others", "others promoted", "d"),
                ("loaded", "adapters in vLLM", ".0f"),
                ("p50", "publish→answer p50 ms", ".0f"),
                ("min", "min ms", ".0f"),
                ("max", "max ms", ".0f"),
                ("promote", "promote call ms", ".0f"),
                ("polls", "requests", ".0f"),
                ("errors", "errors", "d"),
            ],
        )
    )
    same_pid = row_before.get("pid") == row_after.get("pid") and row_before.get("restarts") == row_after.get("restarts")
    print(
        f"vLLM pid {row_before.get('pid')} -> {row_after.get('pid')}, restarts "
        f"{row_before.get('restarts')} -> {row_after.get('restarts')}: {'no restart' if same_pid else 'RESTARTED'}"
    )
    medians = [r["publish_to_answer_ms"]["median"] for r in rows]
    payload = {
        "config": {
            "quick": args.quick,
            "model": BASE_NAME,
            "others_loaded": loaded_steps,
            "repeats": repeats,
            "adapter": {"rank": 8, "modules": "all 7 linear", "init": "random"},
            "promote": "POST /v1/models/pub/promote through the gateway (gunicorn, settings_production)",
            "first_answer": "sequential 1-token chat requests; version from VersionTraffic counters",
            "vllm": env_extra,
        },
        "setup_s": setup_s,
        "wall_s": time.monotonic() - wall_started,
        "vllm": {"before": row_before, "after": row_after, "no_restart": same_pid},
        "rows": rows,
        "ratios": {
            # Flat in the loaded count: the slowest step's median over the fewest-loaded step's.
            "most_loaded_vs_least_loaded": medians[-1] / medians[0] if medians[0] else None,
            "worst_median_ms": max(medians),
            "target_ms": 2000,
        },
        "raw": results,
    }
    path = write_result("publish_latency", payload, machine_info=info, out=args.out)
    print(f"wrote {path} in {payload['wall_s']:.0f} s (setup {setup_s:.0f} s)")
    return 0 if same_pid else 1


if __name__ == "__main__":
    sys.exit(main())
