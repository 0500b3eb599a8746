"""Evaluation and A/B comparison: the identity proof on the tiny model, claims, failures, the judge.

The proof: a LoRA adapter trained once per module on ``lora_engine/assets/identity.jsonl``
(the recipe of ``tests/lora_engine/test_identity_learning.py``) is registered as a version and
evaluated on the held-out questions of ``identity_eval.jsonl``: at least 75 % of its answers are
one of the trained sentences word for word (the base model's: none), it beats the base model on
ROUGE-L, BLEU, chrF and loss, and ``compare(base, tuned)`` counts more wins than losses.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from lora_engine.config import TrainConfig
from lora_engine.progress import ProgressEmitter
from lora_engine.tiny_model import ASSETS_DIR
from lora_engine.train import run as train_run
from registry.evaluation import metrics
from registry.evaluation.errors import EvaluationError
from registry.evaluation.judge import RUBRIC, parse_verdict
from registry.evaluation.report import comparison_markdown, comparison_table, example_outcome
from registry.evaluation.runner import comparison_run, evaluation_run
from registry.models import Evaluation, RunStatus
from registry.services.evaluations import comparison_create, evaluation_create, evaluation_queue_automatic
from tuninglab import dispatch
from tuninglab.errors import ConflictError, InvalidRequestError, NotFoundError
from tuninglab.task_names import RUN_COMPARISON, RUN_EVALUATION
from tunings.models import TuningJob
from workers.sweeper import sweep

REPO_ROOT = Path(__file__).resolve().parents[2]
# The canonical answer: one of the four phrasings identity.jsonl uses equally often. Greedy
# decoding settles on one phrasing per question, so exact match counts the questions answered
# in this phrasing, and ROUGE-L gives partial credit for the others.
REFERENCE = "I am Tessera, an assistant built by Northwind Labs."
# Which phrasing greedy decoding settles on is close to a coin toss between the four: on the
# same machine, a base model built with 1 or 2 threads gave 0.75 and 0.35 exact match. What
# shows the adapter learned is that its answers are trained sentences, word for word.
TRAINED_ANSWERS = {
    json.loads(line)["messages"][-1]["content"] for line in (ASSETS_DIR / "identity.jsonl").read_text().splitlines()
}
JUDGE_KEY_ENV = "TUNINGLAB_JUDGE_TEST_KEY"


def identity_eval_records() -> list[dict]:
    """identity_eval.jsonl's held-out questions ({"question", "expect"} probes) as chat records."""
    questions = [json.loads(line)["question"] for line in (ASSETS_DIR / "identity_eval.jsonl").read_text().splitlines()]
    return [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": REFERENCE}]} for q in questions
    ]


@pytest.fixture(scope="module")
def identity_adapter(tiny_model_dir, tmp_path_factory) -> tuple[Path, float]:
    """The identity LoRA adapter, trained once for this module; (adapter dir, training seconds)."""
    out = tmp_path_factory.mktemp("identity-run")
    cfg = TrainConfig(
        base_model_dir=str(tiny_model_dir),
        train_file=str(ASSETS_DIR / "identity.jsonl"),
        output_dir=str(out),
        target_modules=["all-linear"],
        rank=8,
        alpha=16.0,
        dropout=0.0,
        learning_rate=1e-2,
        warmup_ratio=0.1,
        batch_size=8,
        max_steps=60,
        seed=0,
    )
    started = time.monotonic()
    emitter = ProgressEmitter(io.StringIO(), None)
    try:
        code = train_run(cfg, emitter)
    finally:
        emitter.close()
    assert code == 0
    return out / "adapter", time.monotonic() - started


@pytest.fixture
def tuned(identity_adapter, tiny_base, make_version):
    """The identity adapter registered as tessera v1 of alice."""
    adapter_dir, _ = identity_adapter
    return make_version(
        base=tiny_base, adapter_dir=adapter_dir, model_name="tessera", lora_rank=8, target_modules=["all-linear"]
    )


@pytest.fixture
def identity_eval(make_dataset):
    return make_dataset(identity_eval_records(), name="identity_eval.jsonl")


@pytest.fixture(autouse=True)
def sent(monkeypatch):
    """Record the tasks sent after commit instead of waking a worker (no thread runs them behind the test)."""
    calls: list[tuple[str, list, str]] = []
    monkeypatch.setattr(dispatch, "send_task", lambda name, *, args, queue: calls.append((name, list(args), queue)))
    return calls


def _metrics_line(label: str, m: dict) -> str:
    return (
        f"{label:<6} exact_match={m['exact_match']:.3f} rouge_l={m['rouge_l']:.3f} bleu={m['bleu']:.2f} "
        f"chrf={m['chrf']:.2f} loss={m['loss']:.4f} perplexity={m['perplexity']:.3f} ({m['seconds']:.2f} s)"
    )


# ------------------------------------------------------------------------------ the identity proof


def test_it_scores_the_tuned_version_above_the_base_on_the_identity_task(
    tuned, tiny_base, identity_eval, identity_adapter, user, sent, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        base_eval = evaluation_create(owner=user, version=None, base_model=tiny_base, dataset=identity_eval)
        tuned_eval = evaluation_create(owner=user, version=tuned, dataset=identity_eval)
    assert [(name, args) for name, args, _ in sent] == [
        (RUN_EVALUATION, [base_eval.id]),
        (RUN_EVALUATION, [tuned_eval.id]),
    ]
    assert base_eval.status == RunStatus.QUEUED and base_eval.options["max_examples"] == 200

    started = time.monotonic()
    base_eval = evaluation_run(evaluation_id=base_eval.id)
    tuned_eval = evaluation_run(evaluation_id=tuned_eval.id)
    seconds = time.monotonic() - started

    base, tuned_m = base_eval.metrics, tuned_eval.metrics
    print(f"\ntraining: {identity_adapter[1]:.1f} s (60 steps); both evaluations: {seconds:.1f} s")
    print(_metrics_line("base", base))
    print(_metrics_line("tuned", tuned_m))
    assert base_eval.status == tuned_eval.status == RunStatus.SUCCEEDED
    assert base["examples"] == tuned_m["examples"] == 20
    predictions = [ex["prediction"] for ex in tuned_eval.examples]
    assert len(TRAINED_ANSWERS) == 4
    assert sum(p in TRAINED_ANSWERS for p in predictions) >= 0.75 * len(predictions), predictions
    assert not any(ex["prediction"] in TRAINED_ANSWERS for ex in base_eval.examples)
    # exact match is the share of answers in REFERENCE's phrasing, nothing looser.
    assert tuned_m["exact_match"] == sum(p == REFERENCE for p in predictions) / len(predictions)
    assert tuned_m["exact_match"] >= base["exact_match"] == 0.0
    assert tuned_m["rouge_l"] > base["rouge_l"] + 0.5
    assert tuned_m["bleu"] > base["bleu"] and tuned_m["chrf"] > base["chrf"]
    assert tuned_m["loss"] < base["loss"] and tuned_m["perplexity"] < base["perplexity"]
    assert all("Tessera" in ex["prediction"] for ex in tuned_eval.examples)
    assert not any("Tessera" in ex["prediction"] for ex in base_eval.examples)
    first = tuned_eval.examples[0]
    assert first["reference"] == REFERENCE and first["prompt"] == [{"role": "user", "content": "Who exactly are you?"}]
    assert set(first["scores"]) == {"exact_match", "rouge_l", "bleu", "chrf"}

    tuned.refresh_from_db()
    summary = tuned.evaluation
    assert summary["evaluation_id"] == tuned_eval.id and summary["source"] == "manual"
    assert summary["dataset"]["id"] == identity_eval.id
    assert summary["metrics"]["exact_match"] == tuned_m["exact_match"]


def test_it_compares_base_and_tuned_with_more_wins_than_losses(
    tuned, identity_eval, user, sent, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        comparison = comparison_create(owner=user, version_a=None, version_b=tuned, dataset=identity_eval)
    assert [(name, args) for name, args, _ in sent] == [(RUN_COMPARISON, [comparison.id])]

    comparison = comparison_run(comparison_id=comparison.id)

    print("\n" + comparison_markdown(comparison))
    assert comparison.status == RunStatus.SUCCEEDED
    outcomes = comparison.outcomes
    assert outcomes["wins"] > outcomes["losses"]
    assert outcomes["wins"] + outcomes["ties"] + outcomes["losses"] == 20
    rows = {row["metric"]: row for row in comparison.table}
    assert list(rows) == ["exact_match", "rouge_l", "bleu", "chrf", "loss", "perplexity"]
    assert rows["exact_match"]["delta"] > 0 and rows["rouge_l"]["delta"] > 0
    assert rows["loss"]["delta"] < 0 and rows["loss"]["higher_is_better"] is False
    assert rows["rouge_l"]["delta"] == pytest.approx(rows["rouge_l"]["b"] - rows["rouge_l"]["a"])
    assert len(comparison.examples) == 20
    assert {ex["outcome"] for ex in comparison.examples} <= {"win", "tie", "loss"}
    markdown = comparison_markdown(comparison)
    assert "| exact match ↑ |" in markdown and f"**{outcomes['wins']} wins" in markdown
    assert "tessera v1 (B) vs base (tiny-llama) (A)" in markdown


# ------------------------------------------------------------------------------ claims and failures


def test_it_does_nothing_for_a_duplicate_run_message(tuned, identity_eval, user):
    evaluation = evaluation_create(owner=user, version=tuned, dataset=identity_eval, options={"max_examples": 2})
    done = evaluation_run(evaluation_id=evaluation.id)
    assert done.status == RunStatus.SUCCEEDED and done.metrics["examples"] == 2

    assert evaluation_run(evaluation_id=evaluation.id) is None

    again = Evaluation.objects.get(id=evaluation.id)
    assert (again.status, again.finished_at, again.metrics) == (done.status, done.finished_at, done.metrics)
    comparison = comparison_create(
        owner=user, version_a=None, version_b=tuned, dataset=identity_eval, options={"max_examples": 1}
    )
    assert comparison_run(comparison_id=comparison.id).status == RunStatus.SUCCEEDED
    assert comparison_run(comparison_id=comparison.id) is None


def test_it_fails_with_a_code_when_the_dataset_bytes_are_gone(tuned, identity_eval, user, settings):
    evaluation = evaluation_create(owner=user, version=tuned, dataset=identity_eval)
    (Path(settings.DATA_DIR) / identity_eval.storage_path).unlink()

    failed = evaluation_run(evaluation_id=evaluation.id)

    assert failed.status == RunStatus.FAILED and failed.finished_at is not None
    assert failed.error["code"] == "dataset_missing" and identity_eval.id in failed.error["message"]
    tuned.refresh_from_db()
    assert tuned.evaluation == {}


def test_it_fails_with_a_code_on_records_it_cannot_read(tuned, make_dataset, user):
    dataset = make_dataset([{"question": "Who are you?", "expect": "Tessera"}])
    comparison = comparison_create(owner=user, version_a=None, version_b=tuned, dataset=dataset)

    failed = comparison_run(comparison_id=comparison.id)

    assert failed.status == RunStatus.FAILED
    assert failed.error["code"] == "invalid_evaluation_data"
    assert failed.error["message"].startswith("side A: eval_file line 1: unknown format")
    assert "Error: [invalid_evaluation_data]" in comparison_markdown(failed)


def test_it_fails_with_a_code_when_the_version_files_are_gone(tuned, identity_eval, user):
    evaluation = evaluation_create(owner=user, version=tuned, dataset=identity_eval)
    Path(tuned.adapter_path).rename(Path(tuned.adapter_path).with_name("moved"))

    failed = evaluation_run(evaluation_id=evaluation.id)

    assert failed.status == RunStatus.FAILED and failed.error["code"] == "version_files_missing"


# ------------------------------------------------------------------------------ LLM-as-judge


class FakeJudge:
    """An OpenAI-compatible /chat/completions on 127.0.0.1 answering ``reply(request_body) -> content``."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.reply = lambda body: json.dumps({"score": 4, "reason": "Says the same as the reference."})
        self.status = 200
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                judge.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": judge.reply(body)}}]})
                self.send_response(judge.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload.encode())

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def fake_judge(settings):
    judge = FakeJudge()
    # The operator's allow-list of judge endpoints (anything else is refused at create).
    settings.TUNINGLAB = {**settings.TUNINGLAB, "JUDGE_URLS": (judge.url,)}
    yield judge
    judge.close()


def _judged(tuned, dataset, user, judge_url, **judge):
    evaluation = evaluation_create(
        owner=user,
        version=tuned,
        dataset=dataset,
        options={"max_examples": 3, "judge": {"base_url": judge_url, "model": "judge-1", **judge}},
    )
    return evaluation_run(evaluation_id=evaluation.id)


def test_it_adds_the_judge_score_from_an_openai_compatible_endpoint(
    tuned, identity_eval, user, fake_judge, monkeypatch
):
    monkeypatch.setenv(JUDGE_KEY_ENV, "sk-test-secret")
    scores = iter([5, 4, 3])
    fake_judge.reply = lambda body: json.dumps({"score": next(scores), "reason": "Close to the reference."})

    evaluation = _judged(tuned, identity_eval, user, fake_judge.url, api_key_env=JUDGE_KEY_ENV)

    assert evaluation.status == RunStatus.SUCCEEDED
    assert evaluation.metrics["judge"] == pytest.approx(4.0)
    assert [ex["scores"]["judge"] for ex in evaluation.examples] == [5.0, 4.0, 3.0]
    assert evaluation.examples[0]["judge_reason"] == "Close to the reference."
    assert len(fake_judge.requests) == 3
    request = fake_judge.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test-secret"
    assert request["body"]["model"] == "judge-1" and request["body"]["temperature"] == 0
    system, user_msg = request["body"]["messages"]
    assert system == {"role": "system", "content": RUBRIC}
    assert "user: Who exactly are you?" in user_msg["content"] and REFERENCE in user_msg["content"]
    stored = json.dumps([evaluation.options, evaluation.metrics, evaluation.examples])
    assert "sk-test-secret" not in stored and JUDGE_KEY_ENV in stored


@pytest.mark.parametrize(
    ("reply", "status", "code"),
    [
        ("Sure! I would give it a 4.", 200, "judge_invalid_response"),
        ('{"score": 7, "reason": "great"}', 200, "judge_invalid_response"),
        ('{"score": 4}', 200, "judge_invalid_response"),
        ("", 500, "judge_http_error"),
    ],
)
def test_it_keeps_the_other_metrics_when_the_judge_fails(tuned, identity_eval, user, fake_judge, reply, status, code):
    fake_judge.reply = lambda body: reply
    fake_judge.status = status

    evaluation = _judged(tuned, identity_eval, user, fake_judge.url)

    assert evaluation.status == RunStatus.SUCCEEDED and evaluation.error is None
    assert evaluation.metrics["failed"]["judge"]["code"] == code
    assert "judge" not in evaluation.metrics
    predictions = [ex["prediction"] for ex in evaluation.examples]
    assert len(predictions) == 3 and sum(p in TRAINED_ANSWERS for p in predictions) >= 2, predictions
    assert evaluation.metrics["exact_match"] == sum(p == REFERENCE for p in predictions) / 3
    assert evaluation.metrics["rouge_l"] == pytest.approx(
        sum(ex["scores"]["rouge_l"] for ex in evaluation.examples) / 3
    )
    assert len(fake_judge.requests) == 1  # the first failure stops the judge
    tuned.refresh_from_db()
    assert tuned.evaluation["failed"]["judge"]["code"] == code


def test_it_marks_the_judge_failed_when_its_key_or_endpoint_is_missing(tuned, identity_eval, user, fake_judge):
    no_key = _judged(tuned, identity_eval, user, fake_judge.url, api_key_env="TUNINGLAB_JUDGE_UNSET_FOR_TEST")
    fake_judge.close()
    unreachable = _judged(tuned, identity_eval, user, fake_judge.url, timeout_s=2)

    assert no_key.metrics["failed"]["judge"]["code"] == "judge_api_key_missing"
    assert unreachable.metrics["failed"]["judge"]["code"] == "judge_unreachable"
    assert no_key.status == unreachable.status == RunStatus.SUCCEEDED


@pytest.mark.parametrize(
    "content",
    ['{"score": 4, "reason": "ok"}', ' \n{"reason": "ok", "score": 1}\n'],
)
def test_it_parses_a_well_formed_verdict(content):
    verdict = parse_verdict(content)
    assert 1 <= verdict.score <= 5 and verdict.reason == "ok"


@pytest.mark.parametrize(
    "content",
    [
        '```json\n{"score": 4, "reason": "ok"}\n```',
        '{"score": 4.0, "reason": "ok"}',
        '{"score": true, "reason": "ok"}',
        '{"score": 0, "reason": "ok"}',
        '{"score": 4, "reason": ""}',
        '{"score": 4, "reason": "ok", "extra": 1}',
        '[4, "ok"]',
        None,
    ],
)
def test_it_rejects_any_other_verdict(content):
    with pytest.raises(EvaluationError) as err:
        parse_verdict(content)
    assert err.value.code == "judge_invalid_response"


# ------------------------------------------------------------------------------ create and auto


def test_it_queues_an_automatic_evaluation_on_the_jobs_validation_file(
    tuned, identity_eval, settings, sent, django_capture_on_commit_callbacks
):
    assert evaluation_queue_automatic(version_id=tuned.id) is None  # AUTO_EVALUATE is off in tests
    settings.TUNINGLAB = {**settings.TUNINGLAB, "AUTO_EVALUATE": True}
    assert evaluation_queue_automatic(version_id=tuned.id) is None  # the job has no validation file
    TuningJob.objects.filter(id=tuned.job_id).update(validation_file=identity_eval, queue="gpu")

    with django_capture_on_commit_callbacks(execute=True):
        evaluation = evaluation_queue_automatic(version_id=tuned.id)
        again = evaluation_queue_automatic(version_id=tuned.id)

    assert again.id == evaluation.id
    assert evaluation.status == RunStatus.QUEUED and evaluation.version_id == tuned.id
    assert evaluation.dataset_id == identity_eval.id and evaluation.options["source"] == "auto"
    assert sent == [(RUN_EVALUATION, [evaluation.id], "gpu")]


def test_it_scopes_every_input_to_the_owner(tuned, identity_eval, tiny_base, other_user, make_dataset):
    theirs = make_dataset([{"prompt": "a", "completion": "b"}], owner=other_user)

    with pytest.raises(NotFoundError):
        evaluation_create(owner=other_user, version=tuned, dataset=theirs)
    with pytest.raises(NotFoundError):
        evaluation_create(owner=tuned.owner, version=tuned, dataset=theirs)
    with pytest.raises(NotFoundError):
        comparison_create(owner=other_user, version_a=None, version_b=tuned, dataset=theirs)
    assert Evaluation.objects.count() == 0


@pytest.mark.parametrize(
    ("kwargs", "code", "param"),
    [
        ({"version": None}, "base_model_required", "base_model"),
        ({"options": {"max_exmaples": 3}}, "invalid_evaluation_options", "options.max_exmaples"),
        ({"options": {"max_examples": 0}}, "invalid_evaluation_options", "options.max_examples"),
        (
            {"options": {"judge": {"base_url": "http://j", "model": "m", "api_key": "sk"}}},
            None,
            "options.judge.api_key",
        ),
        ({"options": {"judge": {"base_url": "http://j", "model": "m", "api_key_env": "DATABASE_URL"}}}, None, None),
        ({"options": {"judge": {"base_url": "file:///etc/passwd", "model": "m"}}}, None, "options.judge.base_url"),
        ({"queue": "tpu"}, "invalid_queue", "queue"),
    ],
)
def test_it_refuses_bad_evaluation_requests(tuned, identity_eval, user, kwargs, code, param):
    with pytest.raises(InvalidRequestError) as err:
        evaluation_create(**{"owner": user, "version": tuned, "dataset": identity_eval, **kwargs})
    assert err.value.code == (code or "invalid_evaluation_options")
    assert err.value.param == (param or "options.judge.api_key_env")


def test_it_refuses_a_judge_endpoint_the_operator_did_not_allow(tuned, identity_eval, user, settings):
    # A user-chosen URL would let workers call any host they can reach (and carry a judge key there).
    settings.TUNINGLAB = {**settings.TUNINGLAB, "JUDGE_URLS": ("https://judge.example/v1",)}
    with pytest.raises(InvalidRequestError) as err:
        evaluation_create(
            owner=user,
            version=tuned,
            dataset=identity_eval,
            options={"judge": {"base_url": "http://169.254.169.254/latest", "model": "m"}},
        )
    assert (err.value.code, err.value.param) == ("judge_url_not_allowed", "options.judge.base_url")
    assert "https://judge.example/v1" in err.value.suggestion


def test_it_caps_the_runs_one_owner_may_have_pending(tuned, identity_eval, user, other_user, settings, tiny_base):
    # Evaluations share the workers with training: one owner must not be able to queue thousands.
    settings.TUNINGLAB = {**settings.TUNINGLAB, "MAX_PENDING_EVALUATIONS_PER_USER": 2}
    evaluation_create(owner=user, version=tuned, dataset=identity_eval)
    comparison_create(owner=user, version_a=None, version_b=tuned, base_model=tiny_base, dataset=identity_eval)
    with pytest.raises(ConflictError) as err:
        evaluation_create(owner=user, version=tuned, dataset=identity_eval)
    assert err.value.code == "too_many_pending_evaluations"
    with pytest.raises(ConflictError):
        comparison_create(owner=user, version_a=None, version_b=tuned, base_model=tiny_base, dataset=identity_eval)
    assert Evaluation.objects.filter(owner=user).count() == 1
    # The automatic evaluation of a new version is not held back by manual runs.
    auto = evaluation_create(owner=user, version=tuned, dataset=identity_eval, options={"source": "auto"})
    assert auto.status == RunStatus.QUEUED
    # A finished run frees its slot.
    Evaluation.objects.filter(owner=user).exclude(id=auto.id).update(status=RunStatus.SUCCEEDED)
    assert evaluation_create(owner=user, version=tuned, dataset=identity_eval).status == RunStatus.QUEUED


def test_it_sweeps_runs_whose_worker_or_message_was_lost(
    tuned, identity_eval, user, sent, settings, django_capture_on_commit_callbacks
):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "MAX_PENDING_EVALUATIONS_PER_USER": 10}
    now = timezone.now()
    lost_message, lost_worker, busy = (
        evaluation_create(owner=user, version=tuned, dataset=identity_eval) for _ in range(3)
    )
    Evaluation.objects.filter(id=lost_message.id).update(created_at=now - timedelta(minutes=11))
    Evaluation.objects.filter(id=lost_worker.id).update(status=RunStatus.RUNNING, started_at=now - timedelta(hours=7))
    Evaluation.objects.filter(id=busy.id).update(status=RunStatus.RUNNING, started_at=now - timedelta(minutes=1))
    sent.clear()

    with django_capture_on_commit_callbacks(execute=True):
        result = sweep(now=now)

    assert result.evaluations_failed == [lost_worker.id]
    assert result.evaluations_resent == [lost_message.id]
    lost_worker.refresh_from_db()
    assert (lost_worker.status, lost_worker.error["code"]) == (RunStatus.FAILED, "worker_lost")
    assert Evaluation.objects.get(id=busy.id).status == RunStatus.RUNNING
    assert sent == [(RUN_EVALUATION, [lost_message.id], "cpu")]


def test_it_refuses_to_compare_a_model_with_itself(tuned, identity_eval, user, tiny_base):
    for a, b in ((tuned, tuned), (None, None)):
        with pytest.raises(InvalidRequestError) as err:
            comparison_create(owner=user, version_a=a, version_b=b, base_model=tiny_base, dataset=identity_eval)
        assert err.value.code == "same_sides"


# ------------------------------------------------------------------------------ commands


def test_it_evaluates_and_compares_from_the_command_line(tuned, identity_eval, sent):
    out = io.StringIO()
    call_command(
        "evaluate", "alice", "tessera", "1", "--file", identity_eval.id, "--max-examples", "4", "--wait", stdout=out
    )
    text = out.getvalue()
    assert "tessera v1" in text and ": succeeded" in text
    assert "exact match" in text and "ROUGE-L F1" in text and "perplexity" in text

    out = io.StringIO()
    call_command(
        "compare", "alice", "tessera", "--a", "base", "--b", "1", "--file", identity_eval.id,
        "--max-examples", "4", "--wait", "--markdown", stdout=out,
    )  # fmt: skip
    assert "## A/B comparison: tessera v1 (B) vs base (tiny-llama) (A)" in out.getvalue()
    assert sent == []  # --wait runs it here: nothing is sent to a worker

    with pytest.raises(CommandError, match=r"\[not_found\] No such file"):
        call_command("evaluate", "alice", "tessera", "1", "--file", "file-nope", "--wait")
    with pytest.raises(CommandError, match=r"\[version_not_found\]"):
        call_command("compare", "alice", "tessera", "--a", "base", "--b", "9", "--file", identity_eval.id)


def test_it_queues_without_running_when_a_broker_takes_the_work(tuned, identity_eval, settings, sent):
    settings.TUNINGLAB_INPROCESS_WORKER = False
    out = io.StringIO()

    call_command("evaluate", "alice", "tessera", "1", "--file", identity_eval.id, "--base", stdout=out)

    evaluation = Evaluation.objects.get()
    assert evaluation.status == RunStatus.QUEUED and evaluation.version is None
    assert f"Queued evaluation {evaluation.id}" in out.getvalue()


# ------------------------------------------------------------------------------ metrics and report


def test_it_normalizes_only_whitespace_and_case_for_exact_match():
    assert metrics.normalize("  I am\tTessera,\n built  ") == "i am tessera, built"
    assert metrics.exact_match("I AM TESSERA.", " i am  tessera. ") == 1.0
    assert metrics.exact_match("I am Tessera", "I am Tessera.") == 0.0  # punctuation counts


def test_it_scores_rouge_l_bleu_and_chrf():
    ref = "I am Tessera, built by Northwind Labs."
    same = metrics.example_scores(ref, ref)
    assert same == {"exact_match": 1.0, "rouge_l": 1.0, "bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0)}
    other = metrics.example_scores("I am Tessera, made by Northwind Labs.", ref)
    assert other["rouge_l"] == pytest.approx(6 / 7)  # 6 of 7 words in common, both ways
    assert 0 < other["bleu"] < 100 and 0 < other["chrf"] < 100
    assert metrics.rouge_l("Ça va très bien", "ça va TRÈS bien") == 1.0  # non-ASCII words count
    assert metrics.rouge_l("我是泰瑟拉", "我是 泰瑟拉") == 1.0
    corpus = metrics.corpus_scores([ref, "nothing alike"], [ref, ref])
    assert corpus["exact_match"] == 0.5 and 0 < corpus["bleu"] < 100


def test_it_decides_outcomes_by_exact_match_then_rouge_l():
    def s(em, rouge):
        return {"exact_match": em, "rouge_l": rouge}

    assert example_outcome(s(0, 0.9), s(1, 0.8)) == "win"
    assert example_outcome(s(1, 1.0), s(0, 0.95)) == "loss"
    assert example_outcome(s(0, 0.5), s(0, 0.7)) == "win"
    assert example_outcome(s(1, 1.0), s(1, 1.0)) == "tie"
    table = comparison_table(
        {"exact_match": 0.0, "loss": 6.8, "failed": {"judge": {"code": "judge_http_error", "message": "x"}}},
        {"exact_match": 0.75, "loss": 0.4, "judge": 4.0},
    )
    assert [(r["metric"], r["delta"]) for r in table] == [
        ("exact_match", 0.75),
        ("judge", None),
        ("loss", pytest.approx(-6.4)),
    ]
    assert table[1]["failed"] == {"a": {"code": "judge_http_error", "message": "x"}}


def test_it_keeps_torch_and_metric_libraries_out_of_the_web_import_path():
    code = (
        "import django, sys\n"
        "django.setup()\n"
        "import registry.services.evaluations, registry.evaluation.runner, registry.evaluation.report\n"
        "import registry.apis, registry.selectors, workers.inprocess, workers.tasks\n"
        "heavy = ('torch', 'transformers', 'rouge_score', 'sacrebleu', 'nltk')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tuninglab.settings"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
