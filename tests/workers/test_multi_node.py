"""Multi-node jobs on the platform: node 0 is the worker that claims the job, the other nodes are followers.

Two "nodes" on loopback: the in-process worker runs node 0 and ``tuninglab.dispatch`` runs the
follower's message on a thread of its own, both starting real torchrun launchers of the tiny
model that meet at a static rendezvous on 127.0.0.1 (what two hosts sharing DATA_DIR run). The
followers' own checks (stale message, no shared data dir, fenced out, cancel) run a launcher
whose node 0 never comes: no training, only the stop is measured.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import psutil
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connections

from lora_engine.distributed import DistributedSpec
from lora_engine.launchers import free_port
from tests.helpers import wait_until
from tests.integration.conftest import live_stack, start_worker  # noqa: F401  (fixtures of the Celery test)
from tests.workers.conftest import ASSETS, REAL_DISPATCH, REAL_PENDING
from tuninglab import dispatch
from tuninglab.task_names import FOLLOW_NODE
from tunings.models import JobEvent, TuningJob
from workers import followers, inprocess
from workers.followers import FollowerStart, follow_node
from workers.job_config import build_train_config, job_paths
from workers.runner import run_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

Status = TuningJob.Status
LOSS_TOLERANCE = 1e-4
HP = {"max_steps": 6, "batch_size": 4, "grad_accum_steps": 2, "learning_rate_multiplier": 25.0}
LORA = {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
TWO_NODES = {"strategy": "ddp", "nproc_per_node": 1, "nnodes": 2}


# --- helpers ------------------------------------------------------------------------------


@pytest.fixture
def multi_node(settings):
    settings.TUNINGLAB = {
        **settings.TUNINGLAB,
        "MULTI_NODE": True,
        "NODE_ADDRESS": "127.0.0.1",
        "MULTI_NODE_QUEUE": "",
        "ALLOW_TEST_HOOKS": True,
    }
    return settings.TUNINGLAB


@pytest.fixture
def inprocess_worker(monkeypatch, settings, multi_node):
    """The embedded worker for real: jobs run on its thread, followers on threads of their own."""
    monkeypatch.setattr(dispatch, "dispatch_tuning_job", REAL_DISPATCH)
    monkeypatch.setattr(dispatch, "pending_wakeups", REAL_PENDING)
    settings.TUNINGLAB_INPROCESS_WORKER = True
    yield inprocess
    inprocess.wait_idle(120)
    inprocess.stop()
    assert dispatch.local_threads_join(60), "a follower thread outlived its job"
    connections.close_all()


def create_job(client: Any, *, distributed: dict[str, Any] | None = None, **hp: Any) -> str:
    resp = client.post(
        "/v1/files",
        {
            "file": SimpleUploadedFile("identity.jsonl", (ASSETS / "identity.jsonl").read_bytes()),
            "purpose": "fine-tune",
        },
        format="multipart",
    )
    assert resp.status_code in (200, 201), resp.content
    body = {
        "model": "tiny-llama",
        "training_file": resp.json()["id"],
        "hyperparameters": {**HP, **hp},
        "lora": LORA,
        "seed": 3,
    }
    if distributed:
        body["distributed"] = distributed
    resp = client.post("/v1/tunings", body, format="json")
    assert resp.status_code in (200, 201), resp.content
    return resp.json()["id"]


def wait_for(job_id: str, predicate, timeout: float, what: str) -> TuningJob:
    found: list[TuningJob] = []

    def check() -> bool:
        job = TuningJob.objects.get(id=job_id)
        found[:] = [job]
        return bool(predicate(job))

    assert wait_until(check, timeout, interval=0.2), f"{what}: {found[0].status} {found[0].error}"
    return found[0]


def metrics_lines(job_id: str) -> list[dict[str, Any]]:
    """The protocol lines rank 0 wrote to the attempt's metrics file (the done line too)."""
    return [json.loads(line) for line in (job_paths(job_id).attempt_dir(1) / "metrics.jsonl").read_text().splitlines()]


def losses(job_id: str) -> list[float]:
    return [rec["loss"] for rec in metrics_lines(job_id) if rec.get("type") == "metrics"]


def done_line(job_id: str) -> dict[str, Any]:
    return next(rec for rec in metrics_lines(job_id) if rec.get("type") == "done")


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def node_started(job_id: str, node_rank: int, attempt: int = 1) -> JobEvent | None:
    """The follower's "started" event (its launcher's pid) for ``node_rank`` of ``attempt``."""
    return JobEvent.objects.filter(
        job_id=job_id, data__node_rank=node_rank, data__attempt=attempt, data__pid__isnull=False
    ).first()


def node0_started(job_id: str, attempt: int = 1) -> JobEvent:
    return JobEvent.objects.get(job_id=job_id, message__startswith="Training process started", data__attempt=attempt)


# --- two real nodes through the API -------------------------------------------------------


@pytest.mark.embedded
def test_a_two_node_job_trains_like_one_process(api_client, base_model, inprocess_worker):
    single = create_job(api_client)
    two = create_job(api_client, distributed=TWO_NODES)

    for job_id in (single, two):
        wait_for(job_id, lambda j: j.status in (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED), 240, "not done")
    single_job, job = TuningJob.objects.get(id=single), TuningJob.objects.get(id=two)
    assert single_job.status == Status.SUCCEEDED, single_job.error
    assert job.status == Status.SUCCEEDED, (job.error, list(JobEvent.objects.filter(job=job).values_list("message")))

    launch = job.launch_config
    assert (launch["world_size"], launch["nnodes"], launch["node_rank"], launch["master_addr"]) == (
        2,
        2,
        0,
        "127.0.0.1",
    )
    assert "--nnodes=2" in launch["argv"] and "--node-rank=0" in launch["argv"]
    started = node_started(two, 1)
    assert started is not None and started.message == "Node 1 of 2 started its training processes."
    assert started.data["attempt"] == 1
    # The follower's launcher ran at node 0's rendezvous and wrote its own log next to node 0's.
    node1_log = job_paths(two).job_dir / "attempt-1.node1.log"
    assert node1_log.is_file()
    assert (job.attempt, job.current_step) == (1, 6)
    assert (done_line(two)["world_size"], done_line(single)["world_size"]) == (2, 1)

    reference, multi = losses(single), losses(two)
    assert len(reference) == len(multi) == 6
    diffs = [abs(a - b) for a, b in zip(reference, multi, strict=True)]
    assert max(diffs) <= LOSS_TOLERANCE, diffs
    assert multi[-1] < multi[0]  # it trained


@pytest.mark.embedded
def test_a_lost_node_resumes_in_a_new_attempt_and_a_cancel_leaves_no_process(api_client, base_model, inprocess_worker):
    job_id = create_job(api_client, distributed=TWO_NODES, max_steps=200, checkpoint_every=2, step_delay_s=0.3)
    wait_for(job_id, lambda j: j.current_step >= 3 and node_started(j.id, 1) is not None, 240, "not training")
    follower = process_tree(node_started(job_id, 1).data["pid"])
    node0 = process_tree(node0_started(job_id).data["pid"])
    # Each launcher and its one rank.
    assert len(alive(follower)) == 2 and len(alive(node0)) == 2, (follower, node0)

    # Node 1's host goes away: its launcher and rank die at once.
    for proc in alive(follower):
        proc.kill()
    job = wait_for(job_id, lambda j: node_started(j.id, 1, attempt=2) is not None, 120, "no second attempt")
    lost = JobEvent.objects.get(job_id=job_id, message__startswith="Attempt 1 lost a training process")
    assert lost.level == JobEvent.Level.WARNING and lost.data["launcher"] == "torchrun"
    assert job.attempt == 2 and node0_started(job_id, attempt=2).data["resume"] is True
    assert wait_until(lambda: not alive(follower + node0), 10), alive(follower + node0)  # attempt 1 left nothing

    follower = process_tree(node_started(job_id, 1, attempt=2).data["pid"])
    node0 = process_tree(node0_started(job_id, attempt=2).data["pid"])
    resumed_at = node0_started(job_id, attempt=2).data["resume_step"]
    wait_for(job_id, lambda j: j.current_step > resumed_at + 1, 120, "attempt 2 does not train")
    assert api_client.post(f"/v1/tunings/{job_id}/cancel").status_code == 200
    job = wait_for(job_id, lambda j: j.status in (Status.CANCELLED, Status.FAILED), 120, "not cancelled")
    assert job.status == Status.CANCELLED and job.current_step < 200
    assert dispatch.local_threads_join(30), "a follower did not end with its attempt"
    assert wait_until(lambda: not alive(follower + node0), 10), alive(follower + node0)


# --- the runner sends the follower starts ---------------------------------------------------


def test_node_zero_sends_each_other_node_its_start_with_the_rendezvous(
    make_job, user, settings, multi_node, monkeypatch
):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "MULTI_NODE_QUEUE": "nodes"}
    sent: list[tuple[str, list[Any], str]] = []
    monkeypatch.setattr(dispatch, "send_task", lambda name, *, args, queue: sent.append((name, list(args), queue)))
    # Node 0's own launcher cannot start here: the job fails after the starts were sent.
    monkeypatch.setattr(followers.child_mod.TrainingChild, "start", _refuse_start)
    spec = DistributedSpec(strategy="ddp", nproc_per_node=1, nnodes=3).to_dict()
    job = make_job(user, hyperparameters={"max_steps": 3, "batch_size": 3}, distributed=spec)
    run_job(job.id, worker_id="node0", queue="cpu")
    job.refresh_from_db()

    port = job.launch_config["master_port"]
    assert job.launch_config["master_addr"] == "127.0.0.1" and 1024 <= port <= 65535
    assert sent == [
        (FOLLOW_NODE, [job.id, 1, job.fencing_token, 1, "127.0.0.1", port], "nodes"),
        (FOLLOW_NODE, [job.id, 1, job.fencing_token, 2, "127.0.0.1", port], "nodes"),
    ]
    assert JobEvent.objects.filter(job=job, message="Sent the start of nodes 1..2 to their workers.").exists()


def test_a_single_node_job_sends_no_follower(make_job, user, multi_node, monkeypatch):
    sent: list[Any] = []
    monkeypatch.setattr(dispatch, "send_task", lambda name, *, args, queue: sent.append(name))
    monkeypatch.setattr(followers.child_mod.TrainingChild, "start", _refuse_start)
    spec = DistributedSpec(strategy="ddp", nproc_per_node=2).to_dict()
    job = make_job(user, hyperparameters={"max_steps": 3, "batch_size": 2}, distributed=spec)
    run_job(job.id, worker_id="node0", queue="cpu")
    assert sent == []
    assert "master_port" not in TuningJob.objects.get(id=job.id).launch_config


def test_a_broker_that_cannot_take_the_starts_fails_the_job_before_node_zero_waits(
    make_job, user, multi_node, monkeypatch
):
    def down(name, *, args, queue):
        raise ConnectionError("redis is down")

    monkeypatch.setattr(dispatch, "send_task", down)
    spawned: list[Any] = []
    monkeypatch.setattr(followers.child_mod.TrainingChild, "start", lambda self: spawned.append(self))
    job = make_job(user, hyperparameters={"max_steps": 3, "batch_size": 2}, distributed=_two_node_spec())
    run_job(job.id, worker_id="node0", queue="cpu")
    job.refresh_from_db()
    assert spawned == []
    assert (job.status, job.error["code"]) == (Status.FAILED, "internal_error")
    assert job.error["message"] == "Could not start the other 1 node(s) of this multi-node job."
    assert "redis" not in json.dumps(job.error)


def _refuse_start(self) -> None:
    raise OSError("no process in this test")


def _two_node_spec() -> dict[str, Any]:
    return DistributedSpec(strategy="ddp", nproc_per_node=1, nnodes=2).to_dict()


# --- the follower on its own ----------------------------------------------------------------


@pytest.fixture
def running_job(make_job, user, multi_node):
    """A two-node job running its attempt 1 (token 7) with node 0's config written, as node 0 leaves it."""
    job = make_job(
        user,
        hyperparameters={"max_steps": 3, "batch_size": 2},
        distributed=_two_node_spec(),
        status=Status.RUNNING,
        attempt=1,
        fencing_token=7,
    )
    paths = job_paths(job.id)
    paths.job_dir.mkdir(parents=True, exist_ok=True)
    build_train_config(job, attempt=1).config.to_json(paths.config_file(1))
    return job


def start_for(job: TuningJob, **changes: Any) -> FollowerStart:
    values = {"job_id": job.id, "attempt": 1, "token": 7, "node_rank": 1, "master_addr": "127.0.0.1"}
    values["master_port"] = free_port()  # nobody listens: node 0 never comes, the launcher waits
    values.update(changes)
    return FollowerStart(**values)


def run_in_thread(start: FollowerStart) -> tuple[threading.Thread, list[str]]:
    outcome: list[str] = []

    def target() -> None:
        try:
            outcome.append(follow_node(start, worker_id="node1"))
        finally:
            connections.close_all()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def test_a_start_for_an_attempt_that_no_longer_runs_starts_nothing(running_job, monkeypatch):
    spawned: list[Any] = []
    monkeypatch.setattr(followers.child_mod.TrainingChild, "start", lambda self: spawned.append(self))
    assert follow_node(start_for(running_job, token=6), worker_id="node1") == followers.STALE
    assert follow_node(start_for(running_job, attempt=2), worker_id="node1") == followers.STALE
    running_job.status = Status.QUEUED
    running_job.save(update_fields=["status"])
    assert follow_node(start_for(running_job), worker_id="node1") == followers.STALE
    assert spawned == []
    assert not JobEvent.objects.filter(job=running_job).exists()


def test_a_node_without_the_shared_data_dir_fails_the_job_at_once(running_job):
    job_paths(running_job.id).config_file(1).unlink()
    assert follow_node(start_for(running_job), worker_id="node1") == followers.NOT_STARTED
    running_job.refresh_from_db()
    assert running_job.status == Status.FAILED
    assert running_job.error == {
        "code": "node_unavailable",
        "message": "Node 1 of this multi-node job cannot read the job's files: the worker nodes do not share one "
        "data directory.",
        "param": None,
    }
    assert "TUNINGLAB_DATA_DIR" in running_job.suggestion


def test_a_follower_whose_attempt_was_fenced_out_kills_its_launcher(running_job):
    thread, outcome = run_in_thread(start_for(running_job))
    assert wait_until(lambda: node_started(running_job.id, 1) is not None, 60)
    procs = process_tree(node_started(running_job.id, 1).data["pid"])
    assert alive(procs)
    # Node 0 lost its lease and another worker claimed the job: a new token.
    TuningJob.objects.filter(id=running_job.id).update(fencing_token=8, attempt=2)
    began = time.monotonic()
    thread.join(30)
    assert outcome == [followers.STOPPED]
    assert time.monotonic() - began <= followers.POLL_SECONDS + 5
    assert wait_until(lambda: not alive(procs), 10), alive(procs)


def test_a_follower_stops_its_launcher_after_the_cancel_grace(running_job, settings):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "CANCEL_GRACE_SECONDS": 0.5}
    thread, outcome = run_in_thread(start_for(running_job))
    assert wait_until(lambda: node_started(running_job.id, 1) is not None, 60)
    procs = process_tree(node_started(running_job.id, 1).data["pid"])
    # Cancel asked while node 0 (never here) would stop the ranks: the job is still running.
    TuningJob.objects.filter(id=running_job.id).update(cancel_requested=True)
    thread.join(30)
    assert outcome == [followers.STOPPED]
    assert wait_until(lambda: not alive(procs), 10), alive(procs)
    assert TuningJob.objects.get(id=running_job.id).status == Status.RUNNING  # node 0 settles, not the follower


def test_the_embedded_dispatch_runs_a_follower_beside_the_busy_worker(settings, monkeypatch):
    settings.TUNINGLAB_INPROCESS_WORKER = True
    ran = threading.Event()
    monkeypatch.setitem(dispatch._thread_tasks, FOLLOW_NODE, lambda *args: ran.set())
    dispatch.send_task(FOLLOW_NODE, args=["job", 1, 7, 1, "127.0.0.1", 1234], queue="cpu")
    assert ran.wait(10)
    assert dispatch.local_threads_join(10)


def test_the_follower_task_is_registered_for_the_embedded_worker():
    assert dispatch._thread_tasks[FOLLOW_NODE] is followers.follow_in_process


# --- one Celery worker per node (PostgreSQL + Redis; skipped without them, failed under CI=true) ---


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_two_celery_workers_each_run_one_node_of_a_job(request, api_client, base_model, multi_node, monkeypatch):
    monkeypatch.setattr(dispatch, "dispatch_tuning_job", REAL_DISPATCH)  # through Redis, for real
    monkeypatch.setattr(dispatch, "pending_wakeups", REAL_PENDING)
    start = request.getfixturevalue("start_worker")  # real `celery worker` processes (tests/integration)
    nodes = [start("node-a"), start("node-b")]
    job_id = create_job(api_client, distributed=TWO_NODES)
    job = wait_for(job_id, lambda j: j.status in (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED), 180, "not done")
    events = list(JobEvent.objects.filter(job_id=job_id).order_by("seq").values_list("message", "data"))
    assert job.status == Status.SUCCEEDED, (job.error, events, [n.log()[-2000:] for n in nodes])

    node0 = JobEvent.objects.get(job_id=job_id, message__startswith="Training process started").data["worker"]
    node1 = node_started(job_id, 1).data["worker"]
    # Each node's launcher ran under its own worker process: node 0 under the one that claimed the job.
    assert {node0.split("@")[0], node1.split("@")[0]} == {"node-a", "node-b"}, (node0, node1)
    assert done_line(job_id)["world_size"] == 2 and len(losses(job_id)) == 6
