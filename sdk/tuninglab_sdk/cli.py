"""``tuninglab`` — the command line over the SDK.

Exit codes: 0 ok; 1 the job failed or was cancelled (``--wait``, ``watch``); 2 usage, API
or connection error, or ``--timeout`` passed while waiting (the job keeps running).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import IO, Any

from tuninglab_sdk._client import TuningLab
from tuninglab_sdk._errors import TuningCancelled, TuningFailed, TuningLabError, WaitTimeoutError
from tuninglab_sdk._progress import format_eta

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_ERROR = 2


def _parse_value(text: str) -> Any:
    """``--hp n_epochs=3`` → 3; ``lr_scheduler=cosine`` → "cosine"; JSON where it parses."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _key_values(pairs: Sequence[str] | None, flag: str, parse: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{flag} expects key=value, got {pair!r}")
        out[key.strip()] = _parse_value(value) if parse else value
    return out


def _side(text: str) -> int | str:
    """A comparison side on the command line: a version number or ``base``."""
    if text == "base":
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a version number or 'base', got {text!r}")
    return int(text)


def _raw(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and hasattr(obj, "raw"):
        return obj.raw
    return obj


def _print_json(obj: Any, out: IO[str]) -> None:
    if isinstance(obj, list):
        obj = [_raw(item) for item in obj]
    json.dump(_raw(obj), out, indent=2, sort_keys=False, default=str)
    out.write("\n")


def _table(rows: Iterable[Sequence[Any]], headers: Sequence[str], out: IO[str]) -> None:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    out.write("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _limited(iterable: Iterable[Any], limit: int | None) -> list[Any]:
    items = []
    for item in iterable:
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    return items


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuninglab", description="LLM Tuning Lab command line.")
    parser.add_argument("--base-url", help="server root (default $TUNINGLAB_BASE_URL or http://127.0.0.1:8000)")
    parser.add_argument("--api-key", help="API key (default $TUNINGLAB_API_KEY)")
    parser.add_argument("--timeout", type=float, default=None, help="per-request timeout in seconds")
    parser.add_argument("--max-retries", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    groups = parser.add_subparsers(dest="group", required=True)

    files = groups.add_parser("files", help="datasets").add_subparsers(dest="command", required=True)
    upload = files.add_parser("upload", help="upload a JSONL dataset")
    upload.add_argument("path")
    upload.add_argument("--purpose", default="fine-tune")
    files_list = files.add_parser("list", help="list uploaded files")
    files_list.add_argument("--limit", type=int, default=None, help="show at most N")
    files.add_parser("get", help="show one file").add_argument("file_id")
    files.add_parser("delete", help="delete a file").add_argument("file_id")

    tunings = groups.add_parser("tunings", help="tuning jobs").add_subparsers(dest="command", required=True)
    create = tunings.add_parser("create", help="create a tuning job")
    create.add_argument("--model", required=True, help="base model name")
    create.add_argument("--data", required=True, help="local JSONL path (uploaded first) or file-... id")
    create.add_argument("--validation-data", default=None)
    create.add_argument("--method", choices=["lora", "qlora", "full"], default=None)
    create.add_argument("--suffix", default=None)
    create.add_argument("--seed", type=int, default=None)
    create.add_argument("--priority", type=int, default=None)
    create.add_argument("--hp", action="extend", nargs="+", metavar="KEY=VALUE", help="hyperparameters")
    create.add_argument("--lora", action="extend", nargs="+", metavar="KEY=VALUE", help="lora settings")
    create.add_argument("--metadata", action="extend", nargs="+", metavar="KEY=VALUE", help="metadata pairs")
    create.add_argument("--wait", action="store_true", help="wait and show progress until the job ends")
    create.add_argument("--wait-timeout", type=float, default=None, help="give up waiting after N seconds")
    create.add_argument("--poll-interval", type=float, default=5.0)
    tunings.add_parser("get", help="show one job").add_argument("job_id")
    tunings_list = tunings.add_parser("list", help="list jobs (newest first)")
    tunings_list.add_argument("--limit", type=int, default=20, help="show at most N (default 20)")
    tunings_list.add_argument("--status", default=None, help="e.g. running or queued,running")
    tunings.add_parser("cancel", help="cancel a job").add_argument("job_id")
    watch = tunings.add_parser("watch", help="show a progress bar until the job ends")
    watch.add_argument("job_id")
    watch.add_argument("--wait-timeout", type=float, default=None, help="give up waiting after N seconds")
    watch.add_argument("--poll-interval", type=float, default=5.0)
    events = tunings.add_parser("events", help="a job's events (oldest first)")
    events.add_argument("job_id")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events until the job ends")
    events.add_argument("--poll-interval", type=float, default=2.0)
    tunings.add_parser("checkpoints", help="a job's checkpoints").add_argument("job_id")

    models = groups.add_parser("models", help="the model registry: versions, aliases, evaluations").add_subparsers(
        dest="command", required=True
    )
    models.add_parser("list", help="list models (base models, your models, ft: ids)")
    models.add_parser("get", help="show one model (name or ft: id)").add_argument("model_id")
    models.add_parser("versions", help="list versions of a model (newest first)").add_argument("name")
    version = models.add_parser("version", help="show one version with its lineage")
    version.add_argument("name")
    version.add_argument("version", type=int)
    promote = models.add_parser("promote", help="point an alias at a version (after the serving check)")
    promote.add_argument("name")
    promote.add_argument("--version", type=int, default=None, help="default: the newest version")
    rollback = models.add_parser("rollback", help="move an alias back to the version it held before")
    rollback.add_argument("name")
    rollback.add_argument("--to", type=int, default=None, dest="to_version", help="roll back to this version")
    for move in (promote, rollback):
        move.add_argument("--alias", default="production")
        move.add_argument("--reason", default=None)
    models.add_parser("aliases", help="a model's aliases").add_argument("name")
    history = models.add_parser("history", help="every move of an alias (newest first)")
    history.add_argument("name")
    history.add_argument("--alias", default="production")
    evaluate = models.add_parser("evaluate", help="queue an evaluation of a version on a dataset")
    evaluate.add_argument("name")
    evaluate.add_argument("version", type=int)
    compare = models.add_parser("compare", help="queue an A/B comparison (a side may be 'base')")
    compare.add_argument("name")
    compare.add_argument("version_a", type=_side, help="a version number or 'base'")
    compare.add_argument("version_b", type=_side, help="a version number or 'base'")
    for run in (evaluate, compare):
        run.add_argument("--file", required=True, help="file id or local JSONL path")
        run.add_argument("--max-examples", type=int, default=None)
    models.add_parser("evaluation", help="show an evaluation").add_argument("evaluation_id")
    models.add_parser("comparison", help="show a comparison").add_argument("comparison_id")
    models.add_parser("report", help="a comparison as Markdown").add_argument("comparison_id")
    return parser


def _job_row(job: Any) -> list[Any]:
    loss = f"{job.loss:.4f}" if job.loss is not None else None
    progress = f"{job.progress:.0f}%" if job.progress is not None else None
    return [job.id, job.status, job.model, job.method, progress, loss, job.fine_tuned_model]


_JOB_HEADERS = ["id", "status", "model", "method", "progress", "loss", "fine_tuned_model"]


def _print_event(event: Any, out: IO[str]) -> None:
    data = event.data or {}
    if event.type == "metrics" and data:
        text = " ".join(f"{k}={v}" for k, v in data.items() if k in ("step", "total_steps", "loss", "lr", "progress"))
        if data.get("eta_s") is not None:
            text += f" eta={format_eta(data.get('eta_s'))}"
        message = event.message or text
    else:
        message = event.message
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event.created_at)) if event.created_at else "-"
    out.write(f"{when} {event.level or '':7} {message}\n")
    out.flush()


def _wait(client: TuningLab, job_id: str, args: argparse.Namespace, out: IO[str]) -> int:
    try:
        job = client.tunings.wait_for_completion(
            job_id, timeout=args.wait_timeout, poll_interval=args.poll_interval, progress=True
        )
    except TuningFailed as exc:
        sys.stderr.write(f"{exc}\n")
        if args.json:
            _print_json(exc.job, out)
        return EXIT_JOB_FAILED
    except TuningCancelled as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_JOB_FAILED
    except WaitTimeoutError as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_ERROR
    if args.json:
        _print_json(job, out)
    else:
        out.write(f"{job.id} {job.status} fine_tuned_model={job.fine_tuned_model}\n")
    return EXIT_OK


def _model_call(client: TuningLab, args: argparse.Namespace) -> Any:
    """The ``models`` commands whose answer prints as JSON."""
    models = client.models
    calls = {
        "get": lambda: models.retrieve(args.model_id),
        "version": lambda: models.version(args.name, args.version),
        "promote": lambda: models.promote(args.name, version=args.version, alias=args.alias, reason=args.reason),
        "rollback": lambda: models.rollback(
            args.name, to_version=args.to_version, alias=args.alias, reason=args.reason
        ),
        "aliases": lambda: models.aliases(args.name),
        "evaluate": lambda: models.evaluate(args.name, args.version, file=args.file, max_examples=args.max_examples),
        "compare": lambda: models.compare(
            args.name, args.version_a, args.version_b, file=args.file, max_examples=args.max_examples
        ),
        "evaluation": lambda: models.evaluation(args.evaluation_id),
        "comparison": lambda: models.comparison(args.comparison_id),
    }
    return calls[args.command]()


def _run(args: argparse.Namespace, client: TuningLab, out: IO[str]) -> int:
    command = (args.group, args.command)
    if command == ("files", "upload"):
        _print_json(client.files.upload(args.path, purpose=args.purpose), out)
    elif command == ("files", "list"):
        rows = _limited(client.files.list(), args.limit)
        if args.json:
            _print_json(rows, out)
        else:
            headers = ["id", "filename", "bytes", "status", "format", "example_count"]
            _table([[f.id, f.filename, f.bytes, f.status, f.format, f.example_count] for f in rows], headers, out)
    elif command == ("files", "get"):
        _print_json(client.files.get(args.file_id), out)
    elif command == ("files", "delete"):
        _print_json(client.files.delete(args.file_id), out)
    elif command == ("tunings", "create"):
        job = client.tunings.create(
            model=args.model,
            data=args.data,
            validation_data=args.validation_data,
            method=args.method,
            suffix=args.suffix,
            seed=args.seed,
            priority=args.priority,
            hyperparameters=_key_values(args.hp, "--hp") or None,
            lora=_key_values(args.lora, "--lora") or None,
            metadata=_key_values(args.metadata, "--metadata", parse=False) or None,
        )
        if not args.wait:
            _print_json(job, out)
            return EXIT_OK
        sys.stderr.write(f"created {job.id}\n")
        return _wait(client, job.id, args, out)
    elif command == ("tunings", "get"):
        _print_json(client.tunings.get(args.job_id), out)
    elif command == ("tunings", "list"):
        rows = _limited(client.tunings.list(status=args.status, limit=min(args.limit or 100, 100)), args.limit)
        if args.json:
            _print_json(rows, out)
        else:
            _table([_job_row(job) for job in rows], _JOB_HEADERS, out)
    elif command == ("tunings", "cancel"):
        _print_json(client.tunings.cancel(args.job_id), out)
    elif command == ("tunings", "watch"):
        return _wait(client, args.job_id, args, out)
    elif command == ("tunings", "events"):
        if args.follow:
            stream = client.tunings.events(args.job_id, follow=True, poll_interval=args.poll_interval)
        else:
            stream = reversed(list(client.tunings.events(args.job_id)))
        for event in stream:
            if args.json:
                out.write(json.dumps(event.raw) + "\n")
                out.flush()
            else:
                _print_event(event, out)
    elif command == ("tunings", "checkpoints"):
        rows = list(client.tunings.checkpoints(args.job_id))
        if args.json:
            _print_json(rows, out)
        else:
            _table(
                [[c.id, c.step, c.fine_tuned_model_checkpoint, c.metrics] for c in rows],
                ["id", "step", "name", "metrics"],
                out,
            )
    elif command == ("models", "list"):
        rows = client.models.list()
        if args.json:
            _print_json(rows, out)
        else:
            _table([[m.id, m.owned_by] for m in rows], ["id", "owned_by"], out)
    elif command == ("models", "versions"):
        rows = client.models.versions(args.name)
        if args.json:
            _print_json(rows, out)
        else:
            _table(
                [[v.id, v.version, v.kind, ",".join(v.aliases), v.job_id] for v in rows],
                ["id", "version", "kind", "aliases", "job"],
                out,
            )
    elif command == ("models", "history"):
        events = client.models.alias_history(args.name, args.alias)
        if args.json:
            _print_json(events, out)
        else:
            _table(
                [[e.created_at, e.kind, e.from_version, e.to_version, e.actor, e.reason] for e in events],
                ["created_at", "kind", "from", "to", "actor", "reason"],
                out,
            )
    elif command == ("models", "report"):
        out.write(client.models.comparison_report(args.comparison_id))
    elif command[0] == "models":
        _print_json(_model_call(client, args), out)
    else:  # pragma: no cover - argparse enforces the choices
        raise AssertionError(command)
    return EXIT_OK


def main(argv: Sequence[str] | None = None, *, out: IO[str] | None = None) -> int:
    """Entry point of the ``tuninglab`` console script; returns the exit code."""
    out = out or sys.stdout
    parser = _build_parser()
    args = parser.parse_args(argv)  # exits 2 on usage errors
    try:
        client = TuningLab(
            base_url=args.base_url,
            api_key=args.api_key,
            timeout=args.timeout if args.timeout is not None else 60.0,
            max_retries=args.max_retries,
        )
    except (TuningLabError, ValueError) as exc:
        sys.stderr.write(f"tuninglab: {exc}\n")
        return EXIT_ERROR
    try:
        with client:
            return _run(args, client, out)
    except (TuningLabError, argparse.ArgumentTypeError, FileNotFoundError) as exc:
        sys.stderr.write(f"tuninglab: error: {exc}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("tuninglab: interrupted (the job, if any, keeps running)\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
