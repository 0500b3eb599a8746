"""A structured task learned through the platform: meeting commands (English + Chinese) → JSON.

The whole path a user takes: upload ``lora_engine/assets/meeting_commands_train.jsonl`` (480
commands, 8 intents, slots time / room / name), create a LoRA job over the API with values the
API accepts, a real ``celery worker`` trains it and registers the version, then a comparison
of the base model and the version on ``meeting_commands_heldout.jsonl`` (160 commands whose
templates and slot values never appear in training) runs on the worker. The answers are
graded by ``registry.evaluation.metrics.structured_scores`` (parsed JSON, not text):

- tuned: JSON exact match >= 80 %, valid JSON >= 95 %;
- base: JSON exact match <= 5 % (it has never seen the task).

The default tiny model cannot learn this (its tokenizer has no Chinese, and 2 layers of width
128 never learn to copy an unseen slot value), so the job runs on the bilingual variant
``lora_engine.tiny_model.build_bilingual_tiny_model``, built once and cached like the default.
Figures are printed (``pytest -s``); docs/engine.md quotes them.

Measured (docs/engine.md): the bilingual variant v4 (copy-friendly tokenizer, an induction
circuit in its initial weights, pre-training text with extraction records) with this recipe
reaches the targets for every seed tried: in-process, seeds 1-7, JSON exact match 86-91 %
(mean 88.2 %), valid JSON >= 99 %; base 0 %. v3 with 30 epochs: 66-88 % (seeds 1, 2, 7, Intel).
Through the platform, seed 7: 91.2 % / 99.4 %. This test takes ~4 minutes with a cached model,
~1 more to build it, which a CI run cannot spare: it runs on request (`make structured-task`,
or TUNINGLAB_RUN_STRUCTURED_TASK=1), and CI runs the data's tests
(tests/lora_engine/test_meeting_commands.py).

Needs ``DATABASE_URL`` (PostgreSQL) and ``REDIS_URL``; skipped without them, failed under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from lora_engine.fsio import atomic_dir
from registry.evaluation.metrics import structured_scores
from registry.models import BaseModel, ModelVersion
from tests.conftest import CACHE_DIR
from tunings.models import JobEvent, TuningJob

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.timeout(3600),
    # Reached for every seed tried (module docstring), but it costs minutes a CI run cannot spare:
    # it runs on request, TUNINGLAB_RUN_STRUCTURED_TASK=1.
    pytest.mark.skipif(
        os.environ.get("TUNINGLAB_RUN_STRUCTURED_TASK") != "1",
        reason="the structured task runs on request (~5 min): set TUNINGLAB_RUN_STRUCTURED_TASK=1",
    ),
]

ASSETS = Path(__file__).resolve().parents[2] / "lora_engine" / "assets"
TRAIN_FILE = ASSETS / "meeting_commands_train.jsonl"
HELDOUT_FILE = ASSETS / "meeting_commands_heldout.jsonl"
MODEL_NAME = "tiny-bilingual"

# The recipe: every value within the API's limits (learning_rate_multiplier <= 10).
HYPERPARAMETERS = {
    "n_epochs": 50,  # the API's cap; 30 left a seed at 77.5 % (docs/engine.md)
    "batch_size": 16,
    "learning_rate_multiplier": 10,
    "warmup_ratio": 0.05,
    "max_seq_len": 128,
}
LORA = {"rank": 16, "alpha": 64, "dropout": 0.0, "target_modules": "all-linear"}
EVAL_OPTIONS = {"max_new_tokens": 96, "max_seq_len": 256, "max_examples": 200}

MIN_EXACT_MATCH = 0.80
MIN_VALID_JSON = 0.95
MAX_BASE_EXACT_MATCH = 0.05


@pytest.fixture(scope="session")
def bilingual_model_dir() -> Path:
    """The bilingual tiny Llama, built locally once and cached across runs (keyed by its version)."""
    from lora_engine.tiny_model import BILINGUAL_MODEL_VERSION, build_bilingual_tiny_model

    target = CACHE_DIR / f"tiny-bilingual-v{BILINGUAL_MODEL_VERSION}"
    if not (target / "config.json").exists():
        started = time.monotonic()
        with atomic_dir(target) as staging:
            build_bilingual_tiny_model(staging)
        print(f"\nbuilt {target.name} in {time.monotonic() - started:.0f} s")
    return target


@pytest.fixture
def bilingual_base(db, bilingual_model_dir) -> BaseModel:
    return BaseModel.objects.create(name=MODEL_NAME, path=str(bilingual_model_dir), architecture="LlamaForCausalLM")


def upload(client: Any, path: Path) -> str:
    resp = client.post(
        "/v1/files",
        {"file": SimpleUploadedFile(path.name, path.read_bytes()), "purpose": "fine-tune"},
        format="multipart",
    )
    assert resp.status_code in (200, 201), resp.content
    return resp.json()["id"]


def wait_until(fetch: Any, done: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body = fetch()
    while not done(body) and time.monotonic() < deadline:
        time.sleep(1.0)
        body = fetch()
    assert done(body), f"{what} not finished after {timeout:.0f} s: {str(body)[:2000]}"
    return body


def _report(label: str, scores: dict[str, Any]) -> str:
    lines = [
        f"{label}: json_exact_match={scores['json_exact_match']:.3f} valid_json={scores['valid_json']:.3f} "
        f"intent_accuracy={scores['intent_accuracy']:.3f} ({scores['examples']} examples)"
    ]
    for intent, row in scores["per_intent"].items():
        lines.append(
            f"  intent {intent:<20} exact={row['exact_match']:.2f} "
            f"intent={row['intent_accuracy']:.2f} (n={row['examples']})"
        )
    for slot, cell in scores["per_slot"].items():
        lines.append(f"  slot   {slot:<20} accuracy={cell['accuracy']:.2f} (n={cell['examples']})")
    return "\n".join(lines)


def test_it_learns_meeting_commands_as_json_through_the_platform(live_stack, bilingual_base, api_client, start_worker):
    start_worker("w-structured")
    train_id = upload(api_client, TRAIN_FILE)
    heldout_id = upload(api_client, HELDOUT_FILE)

    resp = api_client.post(
        "/v1/tunings",
        {
            "model": MODEL_NAME,
            "training_file": train_id,
            "hyperparameters": HYPERPARAMETERS,
            "lora": LORA,
            "seed": 7,  # any seed tried reaches the targets (module docstring); pinned to be reproducible
            "suffix": "meeting",
        },
        format="json",
    )
    assert resp.status_code in (200, 201), resp.content
    job_id = resp.json()["id"]
    started = time.monotonic()
    body = wait_until(
        lambda: api_client.get(f"/v1/tunings/{job_id}").json(),
        lambda b: b["status"] in ("succeeded", "failed", "cancelled"),
        2400,
        "training job",
    )
    train_seconds = time.monotonic() - started
    events = "\n".join(e.message for e in JobEvent.objects.filter(job_id=job_id).order_by("seq"))
    assert body["status"] == "succeeded", (body.get("error"), events[-3000:])
    job = TuningJob.objects.get(id=job_id)
    version = ModelVersion.objects.select_related("registered_model").get(job_id=job_id)

    # Base and tuned on the held-out split in one comparison (A = base, B = the version).
    resp = api_client.post(
        f"/v1/models/{version.registered_model.name}/comparisons",
        {"file": heldout_id, "version_a": "base", "version_b": version.version, **EVAL_OPTIONS},
        format="json",
    )
    assert resp.status_code == 202, resp.content
    comparison_id = resp.json()["id"]
    started = time.monotonic()
    comparison = wait_until(
        lambda: api_client.get(f"/v1/comparisons/{comparison_id}").json(),
        lambda b: b["status"] in ("succeeded", "failed"),
        1200,
        "comparison",
    )
    eval_seconds = time.monotonic() - started
    assert comparison["status"] == "succeeded", comparison.get("error")

    heldout = [json.loads(line) for line in HELDOUT_FILE.read_text(encoding="utf-8").splitlines()]
    examples = comparison["examples"]
    assert len(examples) == len(heldout) == 160  # every held-out command was graded
    references = [ex["reference"] for ex in examples]
    assert references == [r["messages"][-1]["content"] for r in heldout]
    base = structured_scores([ex["a"]["prediction"] for ex in examples], references)
    tuned = structured_scores([ex["b"]["prediction"] for ex in examples], references)

    print(
        f"\ntraining job: {train_seconds:.0f} s ({job.trained_tokens} trained tokens, "
        f"{job.resolved_hyperparameters}); comparison of base and tuned: {eval_seconds:.0f} s"
    )
    print(_report("base ", base))
    print(_report("tuned", tuned))
    misses = [(ex["prompt"][-1]["content"], ex["b"]["prediction"], ex["reference"]) for ex in examples]
    misses = [m for m in misses if structured_scores([m[1]], [m[2]])["json_exact_match"] < 1][:10]
    print("tuned misses (command, prediction, reference):\n" + "\n".join(f"  {m}" for m in misses))

    assert tuned["valid_json"] >= MIN_VALID_JSON
    assert tuned["json_exact_match"] >= MIN_EXACT_MATCH
    assert base["json_exact_match"] <= MAX_BASE_EXACT_MATCH
    # Both languages and every intent are learned, not only the easy half.
    assert set(tuned["per_intent"]) == set(base["per_intent"]) and len(tuned["per_intent"]) == 8
    assert set(tuned["per_slot"]) == {"time", "room", "name"}
