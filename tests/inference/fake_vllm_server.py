"""A stand-in for vLLM's OpenAI server: the same command line and admin API, no model, misbehaviour on demand.

The supervisor tests start it exactly as the supervisor starts vLLM, through a wrapper script set
as ``TUNINGLAB_VLLM_PYTHON``: ``<wrapper> -m vllm.entrypoints.openai.api_server --model DIR
--served-model-name NAME --host H --port P ...``, so its ``/proc/<pid>/cmdline`` names the vLLM
server module and the port like the real one. It answers what the supervisor and the reconcile
loop ask, with vLLM's status codes and error shapes:

* ``GET /health``: 200, no key needed;
* ``GET /v1/models``: the base card plus one card per loaded adapter (``parent`` = the base name,
  ``root`` = its path);
* ``POST /v1/load_lora_adapter`` ``{lora_name, lora_path}``: 400 "has already been loaded" when
  the name is taken, 404 when the path holds no ``adapter_config.json``;
* ``POST /v1/unload_lora_adapter`` ``{lora_name}``: 404 when the name is not loaded.

``/v1/*`` needs ``Authorization: Bearer $VLLM_API_KEY`` (401 otherwise), like vLLM started with
that variable set.

Misbehaviour through files in ``$FAKE_VLLM_CONTROL_DIR`` (the names below, shared with the tests):

* ``crash``: the server exits with ``CRASH_EXIT_CODE`` within 0.1 s; the file is removed first,
  so one file is one crash;
* ``crash-on-start``: every start exits with ``CRASH_EXIT_CODE`` before listening (kept);
* ``hang``: ``/health`` does not answer while the file exists.

At start it spawns one child (``sleep``) in its own process group, standing in for vLLM's engine
process: a test can then check that a restart or a stop ends the whole group, not only the
server. Stdlib only: it runs under whatever Python the wrapper names, without Django.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CONTROL_DIR_ENV = "FAKE_VLLM_CONTROL_DIR"
CRASH = "crash"
CRASH_ON_START = "crash-on-start"
HANG = "hang"
CRASH_EXIT_CODE = 3
CRASH_MESSAGE = "fake vLLM: crash requested"
ENGINE_ARGV = ["sleep", "600"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options the supervisor passes that matter here; the rest (dtype, LoRA limits) is ignored."""
    if argv[:1] == ["-m"]:
        argv = argv[2:]  # "-m vllm.entrypoints.openai.api_server"
    parser = argparse.ArgumentParser(prog="fake_vllm_server")
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args, _ = parser.parse_known_args(argv)
    args.served_model_name = args.served_model_name or args.model
    return args


class FakeVllm(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, args: argparse.Namespace, control: Path) -> None:
        super().__init__((args.host, args.port), Handler)
        self.model = args.model
        self.name = args.served_model_name
        self.control = control
        self.api_key = os.environ.get("VLLM_API_KEY", "")
        self.adapters: dict[str, str] = {}  # name -> path
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like uvicorn: the supervisor's client pools connections
    server: FakeVllm

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the supervisor starts vLLM with --disable-uvicorn-access-log

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, err_type: str) -> None:
        self._send(status, {"error": {"message": message, "type": err_type, "param": None, "code": status}})

    def _authorized(self) -> bool:
        if not self.server.api_key or self.headers.get("Authorization") == f"Bearer {self.server.api_key}":
            return True
        self._send(401, {"error": "Unauthorized"})  # vLLM's answer to a missing or wrong key
        return False

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    def do_GET(self) -> None:
        if self.path == "/health":
            while (self.server.control / HANG).exists():
                time.sleep(0.1)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/v1/models":
            if not self._authorized():
                return
            with self.server.lock:
                loaded = dict(self.server.adapters)
            cards = [{"id": self.server.name, "object": "model", "root": self.server.model, "parent": None}]
            cards += [
                {"id": name, "object": "model", "root": path, "parent": self.server.name}
                for name, path in loaded.items()
            ]
            self._send(200, {"object": "list", "data": cards})
        else:
            self._error(404, "Not Found", "NotFoundError")

    def do_POST(self) -> None:
        if not self.path.startswith("/v1/"):
            self._error(404, "Not Found", "NotFoundError")
            return
        if not self._authorized():
            return
        body = self._body()
        name, path = body.get("lora_name"), body.get("lora_path")
        if self.path == "/v1/load_lora_adapter":
            self._load(name, path)
        elif self.path == "/v1/unload_lora_adapter":
            self._unload(name)
        else:
            self._error(404, "Not Found", "NotFoundError")

    def _load(self, name: Any, path: Any) -> None:
        if not name or not path:
            self._error(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
            return
        with self.server.lock:
            if name in self.server.adapters:
                self._error(
                    400,
                    f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in place, "
                    "set 'load_inplace' to True.",
                    "InvalidUserInput",
                )
                return
            if not (Path(path) / "adapter_config.json").is_file():
                self._error(404, f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError")
                return
            self.server.adapters[name] = path
        print(f"Loaded new LoRA adapter: name '{name}', path '{path}'", flush=True)
        self._send(200, f"Success: LoRA adapter '{name}' added successfully.")

    def _unload(self, name: Any) -> None:
        with self.server.lock:
            if self.server.adapters.pop(name, None) is None:
                self._error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
                return
        print(f"Removed LoRA adapter: name '{name}'", flush=True)
        self._send(200, f"Success: LoRA adapter '{name}' removed successfully.")


def watch_for_crash(control: Path) -> None:
    """Exit at once (no cleanup, the engine child left running, like a segfault) when ``crash`` appears."""
    while True:
        flag = control / CRASH
        if flag.exists():
            flag.unlink(missing_ok=True)
            print(CRASH_MESSAGE, flush=True)
            os._exit(CRASH_EXIT_CODE)
        time.sleep(0.1)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    control = Path(os.environ[CONTROL_DIR_ENV])
    if (control / CRASH_ON_START).exists():
        print(f"{CRASH_MESSAGE} at start", flush=True)
        return CRASH_EXIT_CODE
    engine = subprocess.Popen(ENGINE_ARGV, stdin=subprocess.DEVNULL)
    server = FakeVllm(args, control)
    threading.Thread(target=watch_for_crash, args=(control,), daemon=True).start()
    print(
        f"fake vLLM pid {os.getpid()} (engine pid {engine.pid}) serving {args.served_model_name} "
        f"on {args.host}:{args.port}",
        flush=True,
    )
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
