"""``manage.py serve_inference``: run the vLLM supervisor(s) in the foreground until SIGTERM/SIGINT.

One supervisor thread per served base model (``TUNINGLAB_INFERENCE_BASE_MODELS``, or
``--base-model`` to run just one). Each starts its vLLM server, keeps it healthy and loads
the adapters aliases and routes point at. Stop it with Ctrl-C or SIGTERM: the vLLM process
groups are ended before it exits.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.config import InferenceConfigError, served_base, served_bases
from inference.supervisor import Supervisor, SupervisorConflict


class Command(BaseCommand):
    help = "Start and supervise the vLLM server of each served base model (foreground)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--base-model",
            action="append",
            default=[],
            help="Serve only this base model (repeatable; must be in TUNINGLAB_INFERENCE_BASE_MODELS).",
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            bases = served_bases()
        except InferenceConfigError as exc:
            raise CommandError(str(exc)) from exc
        if opts["base_model"]:
            unknown = [name for name in opts["base_model"] if served_base(name) is None]
            if unknown:
                raise CommandError(
                    f"not served by this deployment: {', '.join(unknown)} "
                    f"(TUNINGLAB_INFERENCE_BASE_MODELS is {[b.name for b in bases]})"
                )
            bases = [b for b in bases if b.name in opts["base_model"]]
        if not bases:
            raise CommandError(
                "no base model to serve: set TUNINGLAB_INFERENCE_BASE_MODELS (or TUNINGLAB_SERVING_BASE_MODEL)"
            )
        supervisors = [Supervisor(base) for base in bases]
        for sup in supervisors:
            try:
                sup.claim()
            except SupervisorConflict as exc:
                raise CommandError(str(exc)) from exc

        def shutdown(signum: int, frame: Any) -> None:
            self.stderr.write(f"signal {signum}: stopping vLLM")
            for sup in supervisors:
                sup.stop()

        signal.signal(signal.SIGTERM, shutdown)
        signal.signal(signal.SIGINT, shutdown)
        errors: list[BaseException] = []

        def run(sup: Supervisor) -> None:
            try:
                sup.run()
            except BaseException as exc:  # reported below; the other supervisors are stopped
                errors.append(exc)
                for other in supervisors:
                    other.stop()

        threads = [threading.Thread(target=run, args=(s,), name=f"supervise-{s.base.name}") for s in supervisors]
        for thread, sup in zip(threads, supervisors, strict=True):
            self.stdout.write(f"supervising vLLM for {sup.base.name} at {sup.base.url}")
            thread.start()
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(timeout=0.5)
        if errors:
            raise CommandError(f"supervisor failed: {errors[0]!r}")
        self.stdout.write("stopped")
