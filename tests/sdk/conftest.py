"""Fixtures for the SDK suite: a live server, a real API key, a dataset on disk, a dropping proxy."""

from __future__ import annotations

import http.client
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.helpers import record_dispatches

TOPICS = [
    ("How do I reset my password?", "Open Settings, choose Security, then Reset password."),
    ("Where is my order?", "Your order ships within two days; the tracking link is in your email."),
    ("Can I get a refund?", "Yes, within 30 days of purchase. Reply with your order number."),
    ("How do I change my address?", "Go to Account, then Addresses, and edit the default one."),
    ("Do you ship abroad?", "We ship to the EU, the UK and Canada."),
    ("How do I cancel my plan?", "Open Billing and press Cancel plan; it ends at the period's end."),
    ("Is there a student discount?", "Yes, 20% with a valid student email."),
    ("My app crashes on start.", "Update to the latest version, then restart your phone."),
    ("How do I contact support?", "Write to support@example.com or use the chat on our site."),
    ("Can I change my username?", "Yes, once every 30 days under Profile."),
    ("What payment methods do you take?", "Cards, PayPal and bank transfer."),
    ("How do I delete my account?", "Under Privacy choose Delete account; it takes 7 days."),
]


def write_dataset(path: Path, n: int = 12) -> Path:
    """A small OpenAI-chat JSONL dataset (the server wants at least 10 examples)."""
    lines = []
    for i in range(n):
        question, answer = TOPICS[i % len(TOPICS)]
        record = {
            "messages": [
                {"role": "system", "content": "You are a helpful customer service agent."},
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
        }
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def dataset_path(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "customer_service.jsonl")


@pytest.fixture
def raw_key(user) -> str:
    from tuninglab.services import api_key_create

    _, raw = api_key_create(owner=user, name="sdk-tests")
    return raw


@pytest.fixture
def no_worker(monkeypatch, settings) -> list[tuple[str, str]]:
    """Record job dispatches instead of training: jobs stay ``queued`` (fast, and no training
    processes left behind by tests that only exercise the API)."""
    return record_dispatches(monkeypatch, settings)


@pytest.fixture
def registered_model(db, tmp_path):
    """``tiny-llama`` registered without weights: API-only tests never train, so they need not
    wait for the tiny model build (tests that train use the root ``base_model`` fixture)."""
    from registry.models import BaseModel

    model_dir = tmp_path / "registered-tiny-llama"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    return BaseModel.objects.create(name="tiny-llama", path=str(model_dir), architecture="LlamaForCausalLM")


@pytest.fixture
def sdk(live_server, raw_key, registered_model):
    from tuninglab_sdk import TuningLab

    client = TuningLab(base_url=live_server.url, api_key=raw_key, max_retries=2, timeout=30)
    yield client
    client.close()


class DroppingProxy:
    """An HTTP proxy in a thread in front of ``upstream``.

    For the first request matching ``should_drop(method, path)`` it forwards the request (so
    the server acts on it), reads the answer, and then closes the client connection without
    sending a byte — a response lost on the way back. Every request is recorded.
    """

    def __init__(self, upstream: str, should_drop: Callable[[str, str], bool]) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port
        self.should_drop = should_drop
        self.dropped = 0
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._read_body()
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in {"transfer-encoding", "connection", "host"}
                }
                if body:
                    headers["Content-Length"] = str(len(body))
                with proxy._lock:
                    proxy.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
                    drop = proxy.dropped == 0 and proxy.should_drop(self.command, self.path)
                    if drop:
                        proxy.dropped += 1
                upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream.getresponse()
                payload = response.read()
                upstream.close()
                if drop:
                    # The server did the work; the client never hears about it.
                    self.close_connection = True
                    return
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in {"transfer-encoding", "connection", "content-length"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(payload)
                self.close_connection = True

            do_GET = do_POST = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> DroppingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def matching(self, method: str, path_prefix: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"].startswith(path_prefix)]


@pytest.fixture
def dropping_proxy(live_server) -> Iterator[DroppingProxy]:
    """Drops the answer to the first ``POST /v1/tunings`` (job create)."""
    with DroppingProxy(
        live_server.url, lambda method, path: method == "POST" and path.rstrip("/") == "/v1/tunings"
    ) as p:
        yield p
