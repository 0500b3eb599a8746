"""A new user's self-cognition job: only ``model`` and ``training_file``, and "auto" must work.

Through the official ``openai`` client against our server and the in-process worker: upload
the 96 mixed examples of ``identity_mixed.jsonl`` (40 identity questions + 56 general questions
with the base model's own answers), create a job with no hyperparameters, wait for ``succeeded``,
then probe the new version with the held-out questions of ``identity_mixed_eval.jsonl``. The
base model is registered the way an operator does it, so the job knows its parameter count.
"""

from __future__ import annotations

import json
import time

import pytest
from openai import OpenAI

from registry.models import ModelVersion
from registry.services.base_models import base_model_register
from tests.lora_engine.test_identity_learning import MIXED_FILE, agreement, load_tuned, name_rate, probes
from workers import inprocess

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(900), pytest.mark.slow, pytest.mark.embedded]


def test_it_teaches_a_new_users_identity_with_auto_settings_only(live_server, raw_key, tiny_model_dir, settings):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_model_register(name="tiny-llama", path=tiny_model_dir)
    settings.TUNINGLAB_INPROCESS_WORKER = True
    started = time.monotonic()
    with OpenAI(base_url=live_server.url + "/v1", api_key=raw_key, max_retries=0, timeout=30) as oa:
        try:
            with open(MIXED_FILE, "rb") as handle:
                uploaded = oa.files.create(file=handle, purpose="fine-tune")
            # seed only makes the run repeatable; it picks no hyperparameter.
            job = oa.fine_tuning.jobs.create(model="tiny-llama", training_file=uploaded.id, seed=0)
            assert job.hyperparameters.to_dict() == {"n_epochs": 17, "batch_size": 16, "learning_rate_multiplier": 23.2}
            deadline = time.monotonic() + 800
            while job.status not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
                time.sleep(1.0)
                job = oa.fine_tuning.jobs.retrieve(job.id)
        finally:
            inprocess.wait_idle(60)
            inprocess.stop()
    seconds = time.monotonic() - started
    assert job.status == "succeeded", job.error

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    tuned = load_tuned(tiny_model_dir, ModelVersion.objects.get(job_id=job.id).adapter_path)
    identity_rate, identity_answers = name_rate(tuned, tokenizer, probes("identity"))
    general_rate, general_answers = name_rate(tuned, tokenizer, probes("general"))
    kept = agreement(tuned, base, tokenizer, probes("general"))
    print(
        json.dumps(
            {"identity": identity_rate, "general": general_rate, "agreement": kept.__dict__, "seconds": seconds},
            indent=2,
        )
    )
    assert identity_rate >= 0.9, identity_answers
    assert general_rate <= 0.1, general_answers
    assert kept.token_agreement >= 0.8, kept
