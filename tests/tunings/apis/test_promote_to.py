"""``promote_to``: the alias a job's result moves to when it succeeds, validated at create time."""

from __future__ import annotations

import pytest

from tunings.models import TuningJob


@pytest.mark.parametrize("value", ["latest", "v2", "Prod", "a.b", "x" * 65, 7, ["production"]])
def test_an_alias_mlflow_could_not_mirror_is_refused_with_the_field(api_client, job_body, dispatched, value):
    response = api_client.post("/v1/fine_tuning/jobs", {**job_body, "promote_to": value}, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_alias", "promote_to")
    assert not TuningJob.objects.exists() and not dispatched


def test_the_alias_is_stored_and_shown_and_omitting_it_promotes_nothing(create_job):
    created = create_job(promote_to="production")
    assert created["promote_to"] == "production"
    assert TuningJob.objects.get(id=created["id"]).promote_to == "production"

    plain = create_job(suffix="other")
    assert plain["promote_to"] is None
    assert TuningJob.objects.get(id=plain["id"]).promote_to == ""
