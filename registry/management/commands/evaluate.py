"""``manage.py evaluate OWNER NAME VERSION --file FILE_ID [--base] [--max-examples N] [--wait]``.

Queues the evaluation of version VERSION of OWNER's model NAME (``--base``: of its bare base
model) on the processed file FILE_ID, for a worker to run. ``--wait`` runs it in this process
instead and prints the metrics; so does the embedded mode (no broker), whose only worker lives
in the process that queued the work and would end with this command.
Exit code 1 with ``[code] message`` when the evaluation cannot be created or fails.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from registry.evaluation.cli import metric_lines
from registry.evaluation.runner import evaluation_run
from registry.management.command_helpers import owner_by_username
from registry.models import RunStatus
from registry.selectors import evaluation_dataset_get, model_version_get
from registry.services.evaluations import evaluation_create
from tuninglab.command_progress import activity, add_progress_arguments
from tuninglab.errors import ApiError


class Command(BaseCommand):
    help = "Evaluate a model version (or its base model) on an uploaded file."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("owner", help="Username of the model's owner.")
        parser.add_argument("name", help="Registered model name.")
        parser.add_argument("version", type=int, help="Version number.")
        parser.add_argument("--file", required=True, dest="file_id", help="Id of a processed file of the owner.")
        parser.add_argument("--base", action="store_true", help="Evaluate the version's base model, without it.")
        parser.add_argument("--max-examples", type=int, default=None, help="Evaluate the first N examples.")
        parser.add_argument("--max-new-tokens", type=int, default=None, help="Longest generated answer (tokens).")
        parser.add_argument("--queue", default="cpu", help="Worker queue: cpu or gpu.")
        parser.add_argument("--wait", action="store_true", help="Run it here and print the metrics.")
        add_progress_arguments(parser)

    def handle(self, *args: Any, **opts: Any) -> None:
        owner = owner_by_username(opts["owner"])
        options = {k: opts[k] for k in ("max_examples", "max_new_tokens") if opts[k] is not None}
        run_here = opts["wait"] or settings.TUNINGLAB_INPROCESS_WORKER
        try:
            version = model_version_get(owner=owner, name=opts["name"], version=opts["version"])
            evaluation = evaluation_create(
                owner=owner,
                version=None if opts["base"] else version,
                base_model=version.base_model,
                dataset=evaluation_dataset_get(owner=owner, file_id=opts["file_id"]),
                options=options,
                queue=opts["queue"],
                dispatch=not run_here,
            )
        except ApiError as exc:
            raise CommandError(f"[{exc.code}] {exc.message}") from exc
        subject = f"base ({version.base_model.name})" if opts["base"] else f"{opts['name']} v{version.version}"
        if not run_here:
            self.stdout.write(f"Queued evaluation {evaluation.id} of {subject} on queue {opts['queue']}.")
            return
        if not opts["wait"]:
            self.stdout.write("No broker (embedded mode): running the evaluation in this process.")
        # The evaluation reports no per-example progress: show that it is alive and for how long.
        with activity(f"evaluating {subject}", force=opts["progress"], stream=self.stderr):
            evaluation = evaluation_run(evaluation_id=evaluation.id) or evaluation
        evaluation.refresh_from_db()
        self.stdout.write(
            f"Evaluation {evaluation.id} of {subject} on {evaluation.dataset.filename} "
            f"({evaluation.dataset_id}): {evaluation.status}"
        )
        if evaluation.status != RunStatus.SUCCEEDED:
            error = evaluation.error or {}
            raise CommandError(f"[{error.get('code')}] {error.get('message')}")
        self.stdout.write("\n".join(metric_lines(evaluation.metrics)))
