"""``inference.config``: which bases are served on which ports, and the exact vLLM command and env."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.config import (
    VLLM_SERVER_MODULE,
    InferenceConfigError,
    ServedBase,
    served_base,
    served_bases,
    vllm_argv,
    vllm_env,
)
from inference.vllm_http import KEEPALIVE_EXPIRY_S, client_for, close_clients


@pytest.fixture
def conf(settings):
    """``conf(**overrides)``: set TUNINGLAB keys for one test."""

    def set_(**overrides):
        settings.TUNINGLAB = {**settings.TUNINGLAB, **overrides}

    set_(INFERENCE_PORT=8100, INFERENCE_HOST="127.0.0.1")
    return set_


def _value(argv: list[str], flag: str) -> str:
    assert argv.count(flag) == 1, (flag, argv)
    return argv[argv.index(flag) + 1]


# --- served_bases -----------------------------------------------------------------------------


def test_it_gives_ports_from_inference_port_up_in_order(conf):
    conf(INFERENCE_BASE_MODELS=("tiny-llama", "qwen2.5-0.5b", "llama-3.1-8b"), INFERENCE_PORT=9000)
    assert served_bases() == [
        ServedBase(name="tiny-llama", port=9000, host="127.0.0.1"),
        ServedBase(name="qwen2.5-0.5b", port=9001, host="127.0.0.1"),
        ServedBase(name="llama-3.1-8b", port=9002, host="127.0.0.1"),
    ]


def test_it_takes_an_explicit_port_and_counts_the_others_from_their_position(conf):
    conf(INFERENCE_BASE_MODELS=("tiny-llama:8199", "other"), INFERENCE_HOST="10.0.0.7")
    assert [(b.name, b.port, b.url) for b in served_bases()] == [
        ("tiny-llama", 8199, "http://10.0.0.7:8199"),
        ("other", 8101, "http://10.0.0.7:8101"),
    ]


def test_it_skips_blank_entries_and_strips_spaces(conf):
    conf(INFERENCE_BASE_MODELS=("", "  tiny-llama:8199 ", "   "))
    assert served_bases() == [ServedBase(name="tiny-llama", port=8199, host="127.0.0.1")]


def test_it_serves_nothing_when_no_base_is_configured(conf):
    conf(INFERENCE_BASE_MODELS=("",))
    assert served_bases() == []
    assert served_base("tiny-llama") is None


def test_it_finds_one_served_base_by_name(conf):
    conf(INFERENCE_BASE_MODELS=("tiny-llama:8199", "other:8200"))
    assert served_base("other") == ServedBase(name="other", port=8200, host="127.0.0.1")
    assert served_base("missing") is None


@pytest.mark.parametrize(
    "entry",
    [
        "Tiny-Llama",  # upper case is not a registered name
        "tiny llama",
        "../etc",
        "tiny-llama:",
        "tiny-llama:8",  # a port has 2 to 5 digits
        "tiny-llama:123456",
        "tiny-llama:80a",
        "tiny-llama:81:82",
        ":8100",
        "tiny\nllama",
    ],
)
def test_it_refuses_an_entry_that_is_not_name_or_name_port(conf, entry):
    conf(INFERENCE_BASE_MODELS=(entry,))
    with pytest.raises(InferenceConfigError) as info:
        served_bases()
    assert "is not 'name' or 'name:port'" in str(info.value)


@pytest.mark.parametrize("port", ["99999", "65536", "00"])
def test_it_refuses_a_port_out_of_range(conf, port):
    conf(INFERENCE_BASE_MODELS=(f"tiny-llama:{port}",))
    with pytest.raises(InferenceConfigError) as info:
        served_bases()
    assert f"port {int(port)} of 'tiny-llama:{port}' is out of range" in str(info.value)


def test_it_refuses_two_entries_with_one_name(conf):
    conf(INFERENCE_BASE_MODELS=("tiny-llama:8199", "tiny-llama:8200"))
    with pytest.raises(InferenceConfigError) as info:
        served_bases()
    assert "share a name" in str(info.value)


def test_it_refuses_an_explicit_port_that_collides_with_a_counted_one(conf):
    # "b" is second, so it gets INFERENCE_PORT + 1 = 8101: the port "a" asked for.
    conf(INFERENCE_BASE_MODELS=("a:8101", "b"))
    with pytest.raises(InferenceConfigError) as info:
        served_bases()
    assert "share a port: [8101, 8101]" in str(info.value)


# --- vllm_argv --------------------------------------------------------------------------------


@pytest.fixture
def vllm_conf(conf):
    conf(
        VLLM_PYTHON="/opt/vllm/bin/python",
        VLLM_DEVICE="cpu",
        VLLM_DTYPE="bfloat16",
        VLLM_MAX_MODEL_LEN=512,
        VLLM_MAX_LORAS=4,
        VLLM_MAX_CPU_LORAS=32,
        VLLM_TENSOR_PARALLEL_SIZE=1,
        VLLM_EXTRA_ARGS="",
        VLLM_CPU_KVCACHE_GB=3,
        SERVING_MAX_LORA_RANK=16,
    )
    return conf


BASE = ServedBase(name="tiny-llama", port=8199, host="127.0.0.1")


def test_it_builds_the_vllm_command_as_an_argument_list(vllm_conf, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    argv = vllm_argv(base=BASE, model_path="models/tiny")
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    assert argv[:3] == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert VLLM_SERVER_MODULE == "vllm.entrypoints.openai.api_server"
    model = _value(argv, "--model")
    assert Path(model).is_absolute() and model == str((tmp_path / "models" / "tiny").resolve())
    assert _value(argv, "--served-model-name") == "tiny-llama"
    assert (_value(argv, "--host"), _value(argv, "--port")) == ("127.0.0.1", "8199")
    assert argv.count("--enable-lora") == 1
    assert _value(argv, "--max-loras") == "4"
    assert _value(argv, "--max-lora-rank") == "16"
    assert _value(argv, "--max-cpu-loras") == "32"
    assert (_value(argv, "--dtype"), _value(argv, "--max-model-len")) == ("bfloat16", "512")
    assert "--tensor-parallel-size" not in argv


def test_it_passes_the_serving_rank_limit_as_max_lora_rank(vllm_conf):
    vllm_conf(SERVING_MAX_LORA_RANK=64)
    assert _value(vllm_argv(base=BASE, model_path="/m"), "--max-lora-rank") == "64"


def test_it_never_caches_fewer_adapters_than_one_batch_holds(vllm_conf):
    vllm_conf(VLLM_MAX_LORAS=8, VLLM_MAX_CPU_LORAS=2)
    argv = vllm_argv(base=BASE, model_path="/m")
    assert (_value(argv, "--max-loras"), _value(argv, "--max-cpu-loras")) == ("8", "8")


@pytest.mark.parametrize(
    ("device", "size", "expected"),
    [("gpu", 2, "2"), ("gpu", 1, None), ("cpu", 2, None), ("cpu", 1, None)],
)
def test_it_adds_tensor_parallelism_only_on_gpu_with_more_than_one_device(vllm_conf, device, size, expected):
    vllm_conf(VLLM_DEVICE=device, VLLM_TENSOR_PARALLEL_SIZE=size)
    argv = vllm_argv(base=BASE, model_path="/m")
    if expected is None:
        assert "--tensor-parallel-size" not in argv
    else:
        assert _value(argv, "--tensor-parallel-size") == expected


def _extra_args(conf, extra: str) -> list[str]:
    """What ``VLLM_EXTRA_ARGS = extra`` appends to the command."""
    conf(VLLM_EXTRA_ARGS="")
    plain = vllm_argv(base=BASE, model_path="/m")
    conf(VLLM_EXTRA_ARGS=extra)
    argv = vllm_argv(base=BASE, model_path="/m")
    assert argv[: len(plain)] == plain
    return argv[len(plain) :]


def test_it_appends_extra_args_split_like_a_shell_would(vllm_conf):
    extra = _extra_args(vllm_conf, "--enforce-eager --chat-template-content-format 'a b  c' --seed=7")
    assert extra == ["--enforce-eager", "--chat-template-content-format", "a b  c", "--seed=7"]


def test_it_keeps_shell_metacharacters_as_literal_arguments(vllm_conf):
    extra = _extra_args(vllm_conf, "--seed 1; rm -rf / && echo $HOME | cat `id`")
    assert extra == ["--seed", "1;", "rm", "-rf", "/", "&&", "echo", "$HOME", "|", "cat", "`id`"]


def test_it_refuses_extra_args_with_an_unbalanced_quote(vllm_conf):
    vllm_conf(VLLM_EXTRA_ARGS="--seed 'x")
    with pytest.raises(ValueError, match="quotation"):
        vllm_argv(base=BASE, model_path="/m")


# --- vllm_env ---------------------------------------------------------------------------------


PARENT_ENV = {
    "PATH": "/usr/bin",
    "HOME": "/home/app",
    "DATABASE_URL": "postgres://u:secret@db/app",
    "REDIS_URL": "redis://r:6379/0",
    "SECRET_KEY": "s3cret",
    "TUNINGLAB_SERVING_BASE_MODEL": "tiny-llama",
    "TUNINGLAB_VLLM_EXTRA_ARGS": "--x",
    "HF_HOME": "/cache/hf",
}


def test_it_turns_on_runtime_lora_loading_and_offline_hub_access(vllm_conf):
    env = vllm_env(PARENT_ENV)
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3"


def test_it_keeps_the_parent_environment_minus_our_settings_and_secrets(vllm_conf):
    env = vllm_env(PARENT_ENV)
    assert {k: env.get(k) for k in ("PATH", "HOME", "HF_HOME")} == {
        "PATH": "/usr/bin",
        "HOME": "/home/app",
        "HF_HOME": "/cache/hf",
    }
    for key in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY"):
        assert key not in env
    assert [k for k in env if k.startswith("TUNINGLAB_")] == []
    assert "DATABASE_URL" in PARENT_ENV  # the caller's dict is left alone


def test_it_sets_the_kv_cache_size_on_cpu_only(vllm_conf):
    vllm_conf(VLLM_DEVICE="gpu")
    assert "VLLM_CPU_KVCACHE_SPACE" not in vllm_env(PARENT_ENV)


def test_it_reads_os_environ_when_given_no_base(vllm_conf, monkeypatch):
    monkeypatch.setenv("TUNINGLAB_SOMETHING", "x")
    monkeypatch.setenv("SECRET_KEY", "y")
    monkeypatch.setenv("SOME_VISIBLE_VAR", "z")
    env = vllm_env()
    assert env["SOME_VISIBLE_VAR"] == "z"
    assert "TUNINGLAB_SOMETHING" not in env and "SECRET_KEY" not in env


def test_the_gateways_pool_drops_idle_connections_well_before_vllm_closes_them(vllm_conf):
    """With both at 5 s (httpx's and uvicorn's defaults) a request could go out on a connection
    vLLM was closing that instant: "Server disconnected" → 503 (seen once in the serving benchmark)."""
    server_keepalive = int(vllm_env(PARENT_ENV)["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"])
    client = client_for(BASE)
    try:
        pool_expiry = client._transport._pool._keepalive_expiry  # httpcore's pool: what the client really uses
    finally:
        close_clients()
    assert pool_expiry == KEEPALIVE_EXPIRY_S
    assert pool_expiry <= server_keepalive / 2
