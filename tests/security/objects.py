"""One object of every owned kind for a user, made with the services where they allow it.

Shared by the schemathesis run (its path parameters sometimes name these) and the route walk
(user B asks for user A's objects and must get 404). Cheap: a fabricated base model (no torch
model is loaded), a PEFT adapter built from its shapes, rows for the runs nobody executes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from inference.models import Route, RouteSplit, ShadowRecord
from registry.models import BaseModel, Comparison, Evaluation, ModelVersion
from registry.services.aliases import model_promote
from registry.services.base_models import base_model_register
from registry.services.versions import model_version_create_from_job
from tests.helpers import write_fake_model
from tests.registry.conftest import write_peft_adapter
from tuninglab.services import api_key_create
from tunings.models import Checkpoint, TrainingFile, TuningJob
from tunings.services.state import job_event_add

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASET = (REPO_ROOT / "lora_engine" / "assets" / "identity.jsonl").read_bytes()
MODEL_NAME = "secret-bot"
ALIAS = "production"


@dataclass
class OwnedObjects:
    """A user's API key and one object of each kind, with the ids the URL patterns take."""

    owner: Any
    raw_key: str
    model_name: str
    file: TrainingFile
    job: TuningJob
    version: ModelVersion
    evaluation: Evaluation
    comparison: Comparison

    def path_parameters(self) -> dict[str, str]:
        """URL keyword -> a value naming this owner's object (the schema's path parameter names)."""
        return {
            "file_id": self.file.id,
            "job_id": self.job.id,
            "model_id": self.job.fine_tuned_model or self.model_name,
            "name": self.model_name,
            "version": str(self.version.version),
            "alias": ALIAS,
            "evaluation_id": self.evaluation.id,
            "comparison_id": self.comparison.id,
        }


def shared_base_model(root: Path) -> BaseModel:
    """The fabricated base model every owner's objects use (base names are global)."""
    existing = BaseModel.objects.filter(name="fake-llama").first()
    return existing or base_model_register(name="fake-llama", path=write_fake_model(root / "fake-llama"))


def _stored_file(owner: Any) -> TrainingFile:
    """A processed file whose bytes sit in the content store, as an upload leaves them."""
    digest = hashlib.sha256(DATASET).hexdigest()
    rel = f"files/{digest[:2]}/{digest}.jsonl"
    path = Path(settings.DATA_DIR) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(DATASET)
    return TrainingFile.objects.create(
        owner=owner,
        filename="identity.jsonl",
        sha256=digest,
        bytes=len(DATASET),
        storage_path=rel,
        format="openai_chat",
        example_count=DATASET.count(b"\n"),
        status=TrainingFile.Status.PROCESSED,
    )


def make_owned_objects(*, owner: Any, root: Path, model_name: str = MODEL_NAME) -> OwnedObjects:
    """Create ``owner``'s key, file, finished job (events, checkpoint), version, alias, evaluation,
    comparison, route and shadow record. ``root``: a scratch dir for the model files; model names
    are per owner, so two owners whose objects must not meet take two names."""
    base = shared_base_model(root)
    _, raw_key = api_key_create(owner=owner, name="security")
    file = _stored_file(owner)
    job = TuningJob.objects.create(
        owner=owner,
        base_model=base,
        training_file=file,
        status=TuningJob.Status.SUCCEEDED,
        model_name=model_name,
        lora_rank=8,
        target_modules=["q_proj"],
        resolved_hyperparameters={"max_steps": 3, "batch_size": 2},
    )
    job_event_add(job_id=job.id, message="Training started.")
    checkpoint_dir = Path(settings.DATA_DIR) / "jobs" / job.id / "checkpoint-2"
    checkpoint_dir.mkdir(parents=True)
    Checkpoint.objects.create(job=job, step=2, path=str(checkpoint_dir), metrics={"loss": 1.5})
    adapter = write_peft_adapter(root / f"adapter-{owner.pk}", base.path, modules=("q_proj",))
    version = model_version_create_from_job(job=job, adapter_dir=adapter, metrics={"final_loss": 1.25})
    job.refresh_from_db()
    model_promote(owner=owner, name=model_name, version=version.version, alias=ALIAS, actor=owner)
    evaluation = Evaluation.objects.create(owner=owner, version=version, base_model=base, dataset=file)
    comparison = Comparison.objects.create(
        owner=owner, version_a=None, version_b=version, base_model=base, dataset=file
    )
    route = Route.objects.create(registered_model=version.registered_model)
    RouteSplit.objects.create(route=route, version=version, weight=100)
    ShadowRecord.objects.create(
        owner=owner, registered_model=version.registered_model, shadow_version=version, endpoint="chat"
    )
    return OwnedObjects(
        owner=owner,
        raw_key=raw_key,
        model_name=model_name,
        file=file,
        job=job,
        version=version,
        evaluation=evaluation,
        comparison=comparison,
    )
