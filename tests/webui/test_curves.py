"""tunings.selectors.curves: a job's loss / eval / lr curves from its metrics events."""

from __future__ import annotations

import pytest

from tests.webui.conftest import metrics_sample
from tunings.models import JobEvent
from tunings.selectors.curves import job_curve_points
from tunings.services.jobs import job_metrics_events_add
from tunings.services.state import job_event_add

pytestmark = pytest.mark.django_db


def test_it_reads_train_eval_and_lr_points_in_one_query(make_job, add_metrics, django_assert_num_queries):
    job = make_job(status="running")
    add_metrics(job, range(1, 11), eval_every=5)
    job_event_add(job_id=job.id, message="Checkpoint saved at step 5.", data={"step": 5, "path": "x"})
    with django_assert_num_queries(1):
        curves = job_curve_points(job=job)
    assert [step for step, _ in curves["train"]] == list(range(1, 11))
    assert curves["train"][0] == [1, 2.0] and curves["train"][3] == [4, 0.5]
    assert curves["eval"] == [[5, 0.5], [10, 0.25]]  # only the evaluated steps
    assert len(curves["lr"]) == 10 and curves["lr"][0][1] == pytest.approx(1e-4 * (1 - 1 / 11))
    metrics_seqs = JobEvent.objects.filter(job=job, type="metrics").values_list("seq", flat=True)
    assert curves["last_seq"] == max(metrics_seqs)


def test_it_returns_only_points_after_a_seq(make_job, add_metrics):
    job = make_job(status="running")
    add_metrics(job, range(1, 4))
    first = job_curve_points(job=job)
    add_metrics(job, range(4, 7), eval_every=3)
    later = job_curve_points(job=job, after_seq=first["last_seq"])
    assert [s for s, _ in later["train"]] == [4, 5, 6]
    assert later["eval"] == [[6, pytest.approx(2.5 / 6)]]
    assert later["last_seq"] > first["last_seq"]
    nothing = job_curve_points(job=job, after_seq=later["last_seq"])
    assert nothing == {"train": [], "eval": [], "lr": [], "last_seq": later["last_seq"]}
    bounded = job_curve_points(job=job, until_seq=first["last_seq"])
    assert [s for s, _ in bounded["train"]] == [1, 2, 3] and bounded["last_seq"] == first["last_seq"]


def test_it_survives_missing_keys_nulls_and_odd_data(make_job):
    job = make_job(status="running")
    job_metrics_events_add(
        job_id=job.id,
        samples=[
            ("no step", {"loss": 1.0, "lr": 1e-4}),
            ("null loss (NaN in the engine)", {"step": 1, "loss": None, "lr": 1e-4}),
            ("only eval", {"step": 2, "eval_loss": 0.8}),
            ("a string", {"step": 3, "loss": "1.2", "lr": 2e-4}),
            ("not a dict", None),
            ("a list", [1, 2]),
            ("bool step", {"step": True, "loss": 1.0}),
            ("fine", {"step": 4, "loss": 0.7, "lr": 3e-4, "eval_loss": 0.9}),
        ],
    )
    curves = job_curve_points(job=job)
    assert curves["train"] == [[4, 0.7]]
    assert curves["eval"] == [[2, 0.8], [4, 0.9]]
    assert curves["lr"] == [[1, 1e-4], [3, 2e-4], [4, 3e-4]]


def test_a_resumed_attempts_repeated_step_replaces_the_earlier_value(make_job):
    job = make_job(status="running")
    job_metrics_events_add(job_id=job.id, samples=[metrics_sample(s, loss=1.0 * s, lr=1e-4) for s in (1, 2, 3)])
    # The attempt died after step 3; the next one resumed from the checkpoint at step 2.
    job_metrics_events_add(job_id=job.id, samples=[metrics_sample(s, loss=10.0 * s, lr=1e-4) for s in (3, 4)])
    assert job_curve_points(job=job)["train"] == [[1, 1.0], [2, 2.0], [3, 30.0], [4, 40.0]]


def test_it_reads_only_that_jobs_events(make_job, add_metrics, other_user):
    mine, theirs = make_job(status="running"), make_job(owner=other_user, status="running")
    add_metrics(mine, [1, 2])
    add_metrics(theirs, [1, 2, 3, 4])
    assert len(job_curve_points(job=mine)["train"]) == 2
