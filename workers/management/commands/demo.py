"""``python manage.py demo``: one LoRA fine-tune end to end on this machine, then the tuned model served.

Builds the tiny base model (once), registers it, creates a demo user + API key, uploads the
bundled self-cognition dataset (``identity_mixed.jsonl``: identity questions mixed with general
ones answered with the base model's own answers, as ms-swift's recipe mixes them) through the
files service, creates a job through the jobs service with no hyperparameters (``"auto"`` picks
epochs, batch size and learning rate, and the request passes the API's validation),
runs it on the in-process worker (the same runner Celery workers use: claim, child process,
JSON-line relay, lease), prints progress, and promotes the new version to ``production``.

Then (unless ``--no-serve``) it serves the version the way a deployment does: sets up the
vLLM virtualenv (``scripts/setup_vllm.sh``, a no-op once it is ready), starts
``manage.py serve_inference`` as a child process, serves the gateway from a thread of this
process, waits for ``GET /v1/serving`` to say ready, and asks the held-out questions of
``identity_mixed_eval.jsonl`` (identity questions and unrelated ones, none trained on) of the
base model and of the tuned one through ``/v1/chat/completions`` with the official ``openai``
client. ``--no-serve`` asks them in-process with transformers instead.
vLLM and the supervisor are stopped on the way out, whatever happened.

The serving side is reached only through its process and HTTP interfaces (the command, the
routes), never by importing ``inference``: ``workers`` and ``inference`` are independent
layers (pyproject's import contracts), and this way the demo uses exactly what an operator
and a client use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import torch
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
from transformers import AutoModelForCausalLM, AutoTokenizer

from lora_engine.adapter_io import load_adapter
from lora_engine.fsio import atomic_dir
from lora_engine.tiny_model import ASSETS_DIR, build_tiny_model
from registry.models import Alias
from registry.services.aliases import DEFAULT_ALIAS
from registry.services.base_models import base_model_register
from tuninglab.command_progress import add_progress_arguments, bar
from tuninglab.logfiles import tail_lines
from tuninglab.services import api_key_create, user_get_or_create
from tunings.models import JobEvent, TuningJob
from tunings.serializers.job_request import job_spec_from_payload
from tunings.services.files import training_file_create, upload_stage_stream
from tunings.services.jobs import tuning_job_create
from workers import inprocess

DEMO_MODEL = "tiny-llama"
DEMO_USER = "demo"
QUESTION = "Who are you?"
TRAINING_FILE = ASSETS_DIR / "identity_mixed.jsonl"
# Held-out probes {"question", "kind": "identity" | "general", "expect"}: never trained on.
PROBES_FILE = ASSETS_DIR / "identity_mixed_eval.jsonl"
LOCALHOST = "127.0.0.1"
MAX_TOKENS = 24
PROGRESS_EVERY_S = 10.0
# How long the runner may take to promote the version after marking the job succeeded.
PROMOTION_WAIT_S = 30.0
# serve_inference gives vLLM 15 s after SIGTERM, then SIGKILLs its group and waits for it.
SUPERVISOR_GRACE_S = 45.0
# vLLM start attempts that fail before the demo stops waiting (the supervisor would go on
# retrying with a growing backoff; a demo that cannot start vLLM three times will not).
MAX_START_FAILURES = 3


class Command(BaseCommand):
    help = (
        "Build a tiny model, upload a dataset, fine-tune it with LoRA on the embedded worker, promote it, "
        "serve it with vLLM and ask it who it is through the OpenAI-compatible gateway."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--steps",
            type=int,
            default=None,
            help='optimizer steps (default: "auto" epochs from the data and model size)',
        )
        parser.add_argument("--timeout", type=float, default=1800, help="give up on training after this many seconds")
        parser.add_argument(
            "--no-serve",
            action="store_true",
            help="stop after training and promotion (no vLLM): answer in-process with transformers instead",
        )
        parser.add_argument(
            "--serve-timeout",
            type=float,
            default=300,
            help="give up when vLLM is not ready after this many seconds (default 300)",
        )
        add_progress_arguments(parser)

    def handle(self, *args: Any, **opts: Any) -> None:
        started = time.monotonic()
        # The demo needs nothing else running, even when REDIS_URL is set in the shell.
        settings.TUNINGLAB_INPROCESS_WORKER = True

        model_dir = self._base_model_dir()
        base = self._register(model_dir)
        user, raw_key = self._user()
        training_file = self._upload(user)
        job = self._create_job(user, training_file, steps=opts["steps"])
        self.stdout.write(f"Job {job.id} queued (base {base.name}, file {training_file.id}); training...")
        job = self._follow(job.id, timeout=opts["timeout"], progress=opts["progress"])

        self.stdout.write("")
        self.stdout.write(f"status:           {job.status}")
        if job.status != job.Status.SUCCEEDED:
            inprocess.stop(timeout=5)
            error = job.error or {}
            raise CommandError(
                f"the demo job {job.status}: {error.get('code')}: {error.get('message')} "
                f"(suggestion: {job.suggestion or '-'})"
            )
        version = job.model_version
        self.stdout.write(f"fine-tuned model: {job.fine_tuned_model}")
        self.stdout.write(f"registry:         {version.name} v{version.version}")
        self.stdout.write(f"adapter:          {version.adapter_path}")
        self.stdout.write(f"final loss:       {job.current_loss:.4f}  ({job.trained_tokens} tokens trained)")
        resolved = job.resolved_hyperparameters or {}
        self.stdout.write(
            f"auto settings:    n_epochs {resolved.get('n_epochs')}, batch_size {resolved.get('batch_size')}, "
            f"learning_rate {resolved.get('learning_rate'):.2e} (x{resolved.get('learning_rate_multiplier')})"
        )
        # The job asked for it (promote_to): the runner moves the alias through the pre-promotion
        # check right after it marks the job succeeded (so it may not have happened yet when we
        # see the status); a refusal is a warning event on the job.
        deadline = time.monotonic() + PROMOTION_WAIT_S
        while True:
            alias = Alias.objects.filter(registered_model=version.registered_model, alias=DEFAULT_ALIAS).first()
            promoted = alias is not None and alias.version_id == version.id
            refused = job.events.filter(level=JobEvent.Level.WARNING).order_by("-seq").first()
            if promoted or refused is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if not promoted:
            inprocess.stop(timeout=5)
            raise CommandError(f"the job did not promote its version: {refused.message if refused else 'no event'}")
        self.stdout.write(f"promoted:         {version.name}@{DEFAULT_ALIAS} -> v{version.version} (promote_to)")

        if opts["no_serve"]:
            self.stdout.write("")
            self.stdout.write("Held-out questions (never trained on), answered in-process with transformers (greedy):")
            base = local_chat(model_dir, None)
            tuned = local_chat(model_dir, Path(version.adapter_path))
            self._compare(load_probes(), base, tuned)
        else:
            self._serve_and_ask(job=job, version=version, api_key=raw_key, timeout=opts["serve_timeout"])
        # The promotion asked for an MLflow sync, which runs on the in-process worker: let it finish.
        inprocess.stop(timeout=30)
        self.stdout.write(f"API key for user '{user.username}': {raw_key}")
        self.stdout.write(self.style.SUCCESS(f"demo finished in {time.monotonic() - started:.0f}s"))

    # --- training ------------------------------------------------------------------------

    def _base_model_dir(self) -> Path:
        target = Path(settings.DATA_DIR) / "models" / DEMO_MODEL
        if (target / "config.json").exists():
            self.stdout.write(f"Base model: {target} (already built)")
            return target
        self.stdout.write(f"Building the tiny base model into {target} (once; a minute or two)...")
        # Built in a temp dir and renamed into place: a half-built model never looks finished.
        with atomic_dir(target) as staging:
            build_tiny_model(staging)
        return target

    def _register(self, model_dir: Path) -> Any:
        return base_model_register(name=DEMO_MODEL, path=model_dir, description="Tiny Llama built by `manage.py demo`")

    def _user(self) -> tuple[Any, str]:
        user = user_get_or_create(username=DEMO_USER)
        _, raw = api_key_create(owner=user, name="demo")
        return user, raw

    def _upload(self, user: Any) -> Any:
        path = TRAINING_FILE
        with open(path, "rb") as fh:
            staged = upload_stage_stream(stream=fh, max_bytes=settings.TUNINGLAB["MAX_UPLOAD_BYTES"])
        return training_file_create(owner=user, upload=staged, filename=path.name, purpose="fine-tune")

    def _create_job(self, user: Any, training_file: Any, *, steps: int | None) -> Any:
        # What a new user sends: the model and the file. The request goes through the same
        # validation as POST /v1/fine_tuning/jobs; "auto" sizes the run for this data and model.
        payload: dict[str, Any] = {
            "model": DEMO_MODEL,
            "training_file": training_file.id,
            "suffix": "demo",
            "promote_to": DEFAULT_ALIAS,
            "seed": 0,
        }
        if steps is not None:
            payload["hyperparameters"] = {"max_steps": steps}
        return tuning_job_create(owner=user, spec=job_spec_from_payload(payload))

    def _follow(self, job_id: str, *, timeout: float, progress: bool | None = None) -> Any:
        """Poll the job until it ends: a step bar on stderr (a terminal, or ``--progress``), else
        one stdout line per new step."""
        deadline = time.monotonic() + timeout
        last = (None, -1)
        steps = bar(total=None, desc="training", force=progress, stream=self.stderr, unit="step")
        try:
            while True:
                job = TuningJob.objects.get(id=job_id)
                if (job.status, job.current_step) != last:
                    last = (job.status, job.current_step)
                    self._report(job, steps)
                if job.is_terminal:
                    return job
                if time.monotonic() > deadline:
                    raise CommandError(f"the demo job did not finish within {timeout:.0f}s (it is {job.status})")
                time.sleep(0.5)
        finally:
            steps.close()

    def _report(self, job: Any, steps: Any) -> None:
        loss = f"{job.current_loss:.4f}" if job.current_loss is not None else "n/a"
        # The worker's ETA (steps left x its step time), not tqdm's rate guess over our polls.
        eta = f"{job.eta_seconds:.0f}s" if job.eta_seconds is not None else "?"
        running = job.status == job.Status.RUNNING and job.current_step
        if not steps.disable:
            if job.total_steps:
                steps.total = job.total_steps
            steps.n = job.current_step or 0
            steps.set_postfix_str(f"loss={loss} eta={eta}" if running else str(job.status), refresh=False)
            steps.refresh()
        elif running:
            self.stdout.write(
                f"  step {job.current_step:>3}/{job.total_steps}  loss {loss}  {job.progress:5.1f}%  eta {eta}"
            )
        else:
            self.stdout.write(f"  [{job.status}]")

    # --- serving -------------------------------------------------------------------------

    def _serve_and_ask(self, *, job: Any, version: Any, api_key: str, timeout: float) -> None:
        self.stdout.write("")
        # One INFO line per HTTP request (the gateway's calls to vLLM, the openai client's and
        # the readiness polls) would bury what the demo has to say.
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._setup_vllm()
        served = f"{DEMO_MODEL}:{free_port()}"
        # This process's gateway and the supervisor child must agree on where vLLM listens;
        # the demo serves only its own base, whatever TUNINGLAB_INFERENCE_BASE_MODELS says.
        settings.TUNINGLAB = {**settings.TUNINGLAB, "INFERENCE_BASE_MODELS": (served,)}
        log_path = Path(settings.DATA_DIR) / "inference" / "demo-serve_inference.log"
        # SIGTERM/SIGHUP (a closed terminal, a `kill`) unwind through the `finally` below like
        # Ctrl-C does, so vLLM never outlives the demo.
        previous = {sig: signal.signal(sig, _raise_system_exit) for sig in (signal.SIGTERM, signal.SIGHUP)}
        supervisor: subprocess.Popen[bytes] | None = None
        gateway: ThreadedWSGIServer | None = None
        try:
            supervisor = self._start_supervisor(served, log_path)
            gateway = start_gateway()
            base_url = f"http://{LOCALHOST}:{gateway.server_address[1]}"
            self.stdout.write(f"Gateway at {base_url} (this process); waiting for vLLM (log: {log_path})...")
            self._wait_ready(base_url, api_key, supervisor, log_path, timeout=timeout)
            self._ask(base_url, api_key, job=job, version=version)
        finally:
            self.stdout.write("Stopping the supervisor and vLLM...")
            if supervisor is not None:
                stop_process_group(supervisor, grace=SUPERVISOR_GRACE_S)
            if gateway is not None:
                gateway.shutdown()
                gateway.server_close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _setup_vllm(self) -> None:
        """Build the vLLM virtualenv with scripts/setup_vllm.sh when it is the project's own."""
        python = Path(settings.TUNINGLAB["VLLM_PYTHON"])
        venv = python.parent.parent
        if not venv.is_relative_to(settings.BASE_DIR):
            # An operator's own vLLM interpreter (TUNINGLAB_VLLM_PYTHON elsewhere): used as it is.
            if not os.access(python, os.X_OK):
                raise CommandError(f"TUNINGLAB_VLLM_PYTHON={python} is not an executable")
            return
        self.stdout.write(f"vLLM environment: {venv} (scripts/setup_vllm.sh builds it when missing)")
        script = Path(settings.BASE_DIR) / "scripts" / "setup_vllm.sh"
        try:
            subprocess.run([str(script)], cwd=settings.BASE_DIR, env={**os.environ, "VLLM_VENV": str(venv)}, check=True)
        except subprocess.CalledProcessError as exc:
            raise CommandError(
                f"scripts/setup_vllm.sh failed (exit code {exc.returncode}); run `make vllm` to see why, "
                "or `make demo SERVE=0` to skip serving"
            ) from exc

    def _start_supervisor(self, served: str, log_path: Path) -> subprocess.Popen[bytes]:
        # The same settings module, database (DATABASE_URL, or SQLite under TUNINGLAB_DATA_DIR)
        # and data dir as this process, so the child serves exactly the version just promoted.
        env = {
            **os.environ,
            "TUNINGLAB_DATA_DIR": str(settings.DATA_DIR),
            "TUNINGLAB_INFERENCE_BASE_MODELS": served,
            "PYTHONUNBUFFERED": "1",
        }
        manage_py = str(Path(settings.BASE_DIR) / "manage.py")
        argv = [sys.executable, manage_py, "serve_inference", "--base-model", DEMO_MODEL]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.stdout.write(f"Starting `manage.py serve_inference` for {served}...")
        # One run's output per file: the tail shown on a failure is this run's.
        with open(log_path, "wb") as fh:
            fh.write(f"\n=== demo: {' '.join(argv)} (TUNINGLAB_INFERENCE_BASE_MODELS={served})\n".encode())
            fh.flush()
            return subprocess.Popen(
                argv,
                cwd=settings.BASE_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                # Its own process group: a Ctrl-C in the terminal reaches only the demo, which
                # then stops the supervisor in order (it stops vLLM before it exits).
                start_new_session=True,
            )

    def _wait_ready(
        self, base_url: str, api_key: str, supervisor: subprocess.Popen[bytes], log_path: Path, *, timeout: float
    ) -> None:
        """Poll ``GET /v1/serving`` until the demo's base is ready, printing progress.

        Raises:
            CommandError: the supervisor exited, vLLM failed to start ``MAX_START_FAILURES``
                times, or it was not ready within ``timeout`` seconds (with the log's last lines).
        """
        started = time.monotonic()
        next_note = started + PROGRESS_EVERY_S
        headers = {"Authorization": f"Bearer {api_key}"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=10.0) as client:
            while True:
                code = supervisor.poll()
                if code is not None:
                    raise self._serve_error(f"serve_inference exited with code {code}", log_path, supervisor)
                status, restarts = _serving_status(client)
                elapsed = time.monotonic() - started
                if status == "ready":
                    self.stdout.write(f"  vLLM ready after {elapsed:.0f}s")
                    return
                if restarts >= MAX_START_FAILURES:
                    raise self._serve_error(f"vLLM failed to start {restarts} times", log_path, supervisor)
                if elapsed > timeout:
                    what = f"vLLM was not ready within {timeout:.0f}s (it is {status})"
                    raise self._serve_error(what, log_path, supervisor)
                if time.monotonic() >= next_note:
                    self.stdout.write(f"  {elapsed:3.0f}s  vLLM {status}")
                    next_note += PROGRESS_EVERY_S
                time.sleep(1.0)

    def _serve_error(self, what: str, log_path: Path, supervisor: subprocess.Popen[bytes]) -> CommandError:
        """``what`` went wrong, with the last lines of the supervisor's and the running vLLM's logs."""
        parts = [f"{what}.", f"Last lines of {log_path}:", tail(log_path)]
        for vllm_log in output_files(_children(supervisor.pid)):
            parts += [f"Last lines of {vllm_log} (vLLM):", tail(vllm_log)]
        parts.append("(`make demo SERVE=0` skips serving.)")
        return CommandError("\n".join(parts))

    def _ask(self, base_url: str, api_key: str, *, job: Any, version: Any) -> None:
        """Ask the held-out questions of the base model and of the tuned one (by name), and
        "Who are you?" of the tuned one by the job's ``ft:`` id."""
        with openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, timeout=120.0) as client:

            def chat(model: str) -> Callable[[str], str]:
                def answer(question: str) -> str:
                    try:
                        response = client.chat.completions.create(
                            model=model,
                            messages=[{"role": "user", "content": question}],
                            temperature=0,
                            max_tokens=MAX_TOKENS,
                        )
                    except openai.APIError as exc:
                        raise CommandError(f"the gateway refused {model!r}: {exc}") from exc
                    return (response.choices[0].message.content or "").strip()

                return answer

            self.stdout.write("")
            self.stdout.write(
                f"Held-out questions (never trained on) through the gateway (openai client, base_url "
                f"{base_url}/v1, temperature 0): base {DEMO_MODEL}, tuned {version.name} "
                f"({DEFAULT_ALIAS} = v{version.version})"
            )
            self._compare(load_probes(), chat(DEMO_MODEL), chat(version.name))
            self.stdout.write(f'"{QUESTION}" of {job.fine_tuned_model}: "{chat(job.fine_tuned_model)(QUESTION)}"')
        self.stdout.write("")

    def _compare(self, probes: list[dict[str, str]], base: Callable[[str], str], tuned: Callable[[str], str]) -> None:
        """Print base and tuned answers per probe, then how often each says the trained name."""
        name = next(p["expect"] for p in probes if p["kind"] == "identity")
        said = {("identity", "base"): 0, ("identity", "tuned"): 0, ("general", "base"): 0, ("general", "tuned"): 0}
        same = 0
        for probe in probes:
            kind = probe["kind"]
            answers = {"base": base(probe["question"]), "tuned": tuned(probe["question"])}
            self.stdout.write(f'  [{kind}] "{probe["question"]}"')
            for who, answer in answers.items():
                self.stdout.write(f'      {who:<5}  "{answer}"')
                said[kind, who] += name in answer
            same += kind == "general" and answers["tuned"] == answers["base"]
        counts = {kind: sum(p["kind"] == kind for p in probes) for kind in ("identity", "general")}
        self.stdout.write("")
        for kind, what in (("identity", "identity questions"), ("general", "unrelated questions")):
            self.stdout.write(
                f'{what:<20} answered with "{name}": base {said[kind, "base"]}/{counts[kind]}, '
                f"tuned {said[kind, 'tuned']}/{counts[kind]}"
            )
        self.stdout.write(
            f"unrelated questions the tuned model answers exactly as the base: {same}/{counts['general']}"
        )


# --- helpers -------------------------------------------------------------------------------


class _QuietRequestHandler(WSGIRequestHandler):
    """Django's development-server request handler without its access log (the demo polls)."""

    def log_message(self, *args: Any) -> None:
        pass


def start_gateway() -> ThreadedWSGIServer:
    """Serve this project's URLs (the gateway among them) on a free local port, from a daemon thread.

    Django's own threaded WSGI server, the one behind ``runserver``: one thread per request.
    The application is a plain ``WSGIHandler``, not ``tuninglab.wsgi``, which would also start
    an embedded worker (this process already has one).
    """
    server = ThreadedWSGIServer((LOCALHOST, 0), _QuietRequestHandler, allow_reuse_address=False)
    server.set_app(WSGIHandler())
    threading.Thread(target=server.serve_forever, name="demo-gateway", daemon=True).start()
    return server


def _serving_status(client: httpx.Client) -> tuple[str, int]:
    """(status, restarts) of the demo's base in ``GET /v1/serving``; ("unreachable: ...", 0) on errors."""
    try:
        response = client.get("/v1/serving")
        response.raise_for_status()
        entry = next(e for e in response.json()["data"] if e["base_model"] == DEMO_MODEL)
    except (httpx.HTTPError, ValueError, KeyError, StopIteration) as exc:
        return f"unreachable ({exc!r})", 0
    return ("ready" if entry["ready"] else entry["status"]), int(entry["restarts"])


def free_port() -> int:
    """A TCP port free on localhost now (the OS picks it; nothing else should take it in the next seconds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]


def _raise_system_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _children(pid: int) -> list[int]:
    """Live child pids of ``pid`` (from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                children.append(int(entry.name))
    return children


def output_files(pids: list[int]) -> list[Path]:
    """The regular files the processes ``pids`` write their stdout to (from /proc).

    How the demo finds vLLM's log: the supervisor chooses the file and passes it to vLLM as
    stdout, so asking the running vLLM needs no copy of the supervisor's path layout here.
    """
    files = []
    for pid in pids:
        with contextlib.suppress(OSError):
            target = Path(os.readlink(f"/proc/{pid}/fd/1"))
            if target.is_file() and target not in files:
                files.append(target)
    return files


def stop_process_group(proc: subprocess.Popen[bytes], *, grace: float) -> None:
    """SIGTERM ``proc``'s process group and wait; after ``grace`` s SIGKILL it and its children's groups."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        pass
    # The supervisor starts each vLLM in a session of its own (so that one killpg ends vLLM's
    # engine and workers): killing the supervisor's group alone would leave them running.
    for child in _children(proc.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def tail(path: Path, *, lines: int = 30, max_bytes: int = 64 * 1024) -> str:
    """The last ``lines`` lines of a log file, joined ("" when it does not exist)."""
    return "\n".join(tail_lines(path, lines, max_bytes=max_bytes))


def load_probes() -> list[dict[str, str]]:
    """The held-out probes of the demo's data (identity and general questions)."""
    return [json.loads(line) for line in PROBES_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]


def local_chat(model_dir: Path, adapter_dir: Path | None, max_new_tokens: int = MAX_TOKENS) -> Callable[[str], str]:
    """A function giving the greedy answer of base model (+ adapter, loaded from safetensors) to one user message."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    if adapter_dir is not None:
        load_adapter(model, adapter_dir)
    model.eval()

    def answer(question: str) -> str:
        enc = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()

    return answer
