"""Distributed runs on this CPU (2 ranks, gloo; DeepSpeed's CPU accelerator) against one process.

Every run here is started the way the worker starts it: the argv of
``lora_engine.launchers.launch_plan`` (torchrun for DDP/FSDP, the deepspeed launcher for ZeRO),
in a subprocess, reading the JSON lines rank 0 writes on stdout.

Same data, seed and global batch (batch 4 split 2+2, 2 micro-batches per step), dropout 0 (with
dropout each rank draws its own masks, so only the distribution matches): the per-step loss of
each strategy equals the single-process run's within LOSS_TOLERANCE, and the exported adapters
agree within ADAPTER_TOLERANCE and load in PEFT.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from lora_engine.config import TrainConfig
from lora_engine.errors import ConfigError
from lora_engine.launchers import deepspeed_config, free_port, launch_plan
from lora_engine.manifest import SHARDED_DIR, latest_checkpoint
from tests.helpers import training_rank_pid
from tests.lora_engine.conftest import IDENTITY_FILE, REPO_ROOT, engine_env, run_inprocess

# Measured: <= 4e-7 for all four (summation order differs between the engines' reductions).
LOSS_TOLERANCE = 1e-4
ADAPTER_TOLERANCE = 1e-5
RUN_TIMEOUT_S = 600
STEPS = 6
STRATEGIES: dict[str, dict[str, Any]] = {
    "ddp": {"strategy": "ddp", "nproc_per_node": 2},
    "fsdp": {"strategy": "fsdp", "nproc_per_node": 2},
    "zero2": {"strategy": "deepspeed", "zero_stage": 2, "nproc_per_node": 2},
    "zero3": {"strategy": "deepspeed", "zero_stage": 3, "nproc_per_node": 2},
}
# ZeRO-3 with optimizer states and parameters offloaded to host memory (on this CPU they already
# are: the run shows the offload path keeps the numbers).
WITH_OFFLOAD = {
    **STRATEGIES,
    "zero3_offload": {
        "strategy": "deepspeed",
        "zero_stage": 3,
        "offload_optimizer": True,
        "offload_params": True,
        "nproc_per_node": 2,
    },
}


def make_config(model_dir: Path, out: Path, distributed: dict[str, Any] | None = None, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "base_model_dir": str(model_dir),
        "train_file": str(IDENTITY_FILE),
        "output_dir": str(out),
        "target_modules": ["q_proj", "v_proj"],
        "rank": 4,
        "alpha": 8.0,
        "dropout": 0.0,
        "learning_rate": 5e-3,
        "batch_size": 4,
        "grad_accum_steps": 2,
        "max_steps": STEPS,
        "checkpoint_every": 3,
        "seed": 3,
        "distributed": distributed or {},
    }
    values.update(overrides)
    return TrainConfig(**values)


def start(cfg: TrainConfig, *, node_rank: int = 0, master_port: int | None = None) -> subprocess.Popen:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / f"config-node{node_rank}.json"
    cfg.to_json(config_path)
    plan = launch_plan(
        cfg, str(config_path), python=sys.executable, cuda=False, node_rank=node_rank, master_port=master_port
    )
    return subprocess.Popen(
        plan.argv,
        stdout=subprocess.PIPE,
        stderr=open(out / f"launcher-node{node_rank}.log", "wb"),
        text=True,
        cwd=REPO_ROOT,
        env={**engine_env(), **plan.env},
        start_new_session=True,
    )


def protocol_lines(text: str) -> list[dict[str, Any]]:
    """The JSON lines (launchers add their own log lines to stdout; the worker skips those too)."""
    lines = []
    for raw in text.splitlines():
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict) and "type" in obj:
            lines.append(obj)
    return lines


def finish(proc: subprocess.Popen) -> tuple[int, list[dict[str, Any]]]:
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, protocol_lines(out)


def run_to_end(cfg: TrainConfig) -> dict[str, Any]:
    rc, lines = finish(start(cfg))
    log = (Path(cfg.output_dir) / "launcher-node0.log").read_text(errors="replace")[-3000:]
    assert rc == 0, (lines[-3:], log)
    done = [line for line in lines if line["type"] == "done"]
    assert len(done) == 1, lines[-3:]
    return {"lines": lines, "done": done[0], "losses": [line["loss"] for line in lines if line["type"] == "metrics"]}


def adapter_tensors(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The single-process run and one run per strategy, each once for the module."""
    root = tmp_path_factory.mktemp("distributed")
    extensions = root / "torch-extensions"  # where torch would JIT-build a C++ op for these runs
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_EXTENSIONS_DIR", str(extensions))
        results = {"single": run_to_end(make_config(tiny_model_dir, root / "single"))}
        for name, spec in WITH_OFFLOAD.items():
            results[name] = run_to_end(make_config(tiny_model_dir, root / name, spec))
    results["root"], results["extensions"] = root, extensions
    return results


def test_deepspeed_on_cpu_builds_no_cpp_extension(runs: dict[str, Any]) -> None:
    """DeepSpeed's CPU backend would compile its shared-memory collectives (1-2 min, a compiler on
    every worker) though training never uses them; the ZeRO runs above built nothing."""
    assert {"zero2", "zero3", "zero3_offload"} <= runs.keys()
    built = (
        sorted(str(p.relative_to(runs["extensions"])) for p in runs["extensions"].rglob("*"))
        if runs["extensions"].exists()
        else []
    )
    assert built == [], built


@pytest.mark.parametrize("name", list(WITH_OFFLOAD))
def test_each_strategy_follows_the_single_process_loss_curve_and_exports_the_same_adapter(
    runs: dict[str, Any], name: str, tiny_model_dir: Path
) -> None:
    single, run = runs["single"], runs[name]
    assert len(single["losses"]) == len(run["losses"]) == STEPS
    diffs = [abs(a - b) for a, b in zip(single["losses"], run["losses"], strict=True)]
    assert max(diffs) <= LOSS_TOLERANCE, (name, diffs)
    assert run["done"]["trained_tokens"] == single["done"]["trained_tokens"]  # all-reduced counts
    assert run["done"]["world_size"] == 2 and run["done"]["strategy"] == WITH_OFFLOAD[name]["strategy"]
    assert [m["rank"] for m in run["done"]["rank_memory"]] == [0, 1]
    # Only rank 0 reports: one metrics line per step, not one per rank.
    assert sum(1 for line in run["lines"] if line["type"] == "metrics") == STEPS

    mine, ref = adapter_tensors(runs["root"] / name), adapter_tensors(runs["root"] / "single")
    assert mine.keys() == ref.keys()
    worst = max(float((mine[k] - ref[k]).abs().max()) for k in ref)
    assert worst <= ADAPTER_TOLERANCE, (name, worst)
    # ... and it moved: the adapter is trained, not the initial B = 0.
    assert max(float(t.abs().max()) for k, t in mine.items() if "lora_B" in k) > 1e-3

    # PEFT loads it and computes what the single-process adapter computes.
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    logits = []
    for adapter in (runs["root"] / name / "adapter", runs["root"] / "single" / "adapter"):
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
        model = PeftModel.from_pretrained(base, str(adapter)).eval()
        with torch.no_grad():
            logits.append(model(input_ids=ids).logits)
    assert torch.allclose(logits[0], logits[1], atol=1e-4)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_checkpoints_hold_each_ranks_part(runs: dict[str, Any], name: str) -> None:
    ckpt = latest_checkpoint(runs["root"] / name / "checkpoints")
    assert ckpt is not None and ckpt.name == "step-000003"
    sharded = ckpt / SHARDED_DIR
    files = sorted(p.relative_to(sharded).as_posix() for p in sharded.rglob("*") if p.is_file())
    assert "rng-rank1.safetensors" in files
    if name == "ddp":  # every rank holds the same state: rank 0 writes it whole
        assert (ckpt / "optimizer.pt").is_file() and files == ["rng-rank1.safetensors"]
    elif name == "fsdp":  # torch.distributed.checkpoint: one shard file per rank
        assert {"__0_0.distcp", "__1_0.distcp", ".metadata"} <= set(files)
        assert not (ckpt / "optimizer.pt").exists()
    else:  # DeepSpeed: the ZeRO partitions of the optimizer state, one per rank
        partitions = [f for f in files if f.endswith("optim_states.pt")]
        assert len(partitions) == 2, files
        assert not (ckpt / "optimizer.pt").exists()


# ZeRO-3's kill-and-resume runs through the platform (tests/integration/test_distributed_jobs.py).
@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_killing_one_rank_ends_the_launch_and_the_resumed_run_ends_with_the_same_adapter(
    runs: dict[str, Any], name: str, tiny_model_dir: Path
) -> None:
    out = runs["root"] / f"{name}-killed"
    proc = start(make_config(tiny_model_dir, out, STRATEGIES[name], step_delay_s=1.0))
    seen: list[dict[str, Any]] = []
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:  # until the step-3 checkpoint is published
            seen += protocol_lines(raw)
            if any(line["type"] == "checkpoint" for line in seen):
                break
        os.kill(training_rank_pid(proc.pid, 1), signal.SIGKILL)
    finally:
        rc, rest = finish(proc)
    assert rc != 0
    assert not [line for line in seen + rest if line["type"] == "done"]
    assert latest_checkpoint(out / "checkpoints").name == "step-000003"

    resumed = run_to_end(make_config(tiny_model_dir, out, STRATEGIES[name], resume=True))
    assert any("resumed from checkpoint step-000003" in line.get("message", "") for line in resumed["lines"])
    assert resumed["losses"] == runs[name]["losses"][3:]  # steps 4..6, exactly as uninterrupted
    mine, ref = adapter_tensors(out), adapter_tensors(runs["root"] / name)
    assert all(torch.equal(mine[k], ref[k]) for k in ref), name


@pytest.mark.parametrize("name", ["ddp", "zero3"])
def test_an_epochs_last_micro_batch_smaller_than_the_world_still_trains_like_one_process(
    runs: dict[str, Any], name: str, tiny_model_dir: Path
) -> None:
    """37 examples, batch 4: the epoch's last micro-batch holds 1 example, so rank 1 has none and
    runs an idle (zero-loss) forward and backward; every example is trained on exactly once."""
    data = runs["root"] / "uneven.jsonl"
    data.write_text("".join(IDENTITY_FILE.read_text().splitlines(keepends=True)[:37]))
    common = {"train_file": str(data), "max_steps": 5, "checkpoint_every": 0}  # 10 micro-batches, 2 per step
    single = run_to_end(make_config(tiny_model_dir, runs["root"] / f"uneven-single-{name}", **common))
    run = run_to_end(make_config(tiny_model_dir, runs["root"] / f"uneven-{name}", STRATEGIES[name], **common))
    diffs = [abs(a - b) for a, b in zip(single["losses"], run["losses"], strict=True)]
    assert len(diffs) == 5 and max(diffs) <= LOSS_TOLERANCE, diffs
    assert run["done"]["trained_tokens"] == single["done"]["trained_tokens"]


def test_two_nodes_on_loopback_train_like_one_process(runs: dict[str, Any], tiny_model_dir: Path) -> None:
    """nnodes=2, one process each, a static rendezvous on 127.0.0.1: what two machines run."""
    out = runs["root"] / "two-nodes"
    cfg = make_config(tiny_model_dir, out, {"strategy": "ddp", "nproc_per_node": 1, "nnodes": 2})
    port = free_port()
    nodes = [start(cfg, node_rank=r, master_port=port) for r in (0, 1)]
    results = [finish(p) for p in nodes]
    assert [rc for rc, _ in results] == [0, 0], [lines[-2:] for _, lines in results]
    node0, node1 = results[0][1], results[1][1]
    assert not node1  # rank 1 lives on node 1 and reports nothing; node 0 holds rank 0
    losses = [line["loss"] for line in node0 if line["type"] == "metrics"]
    diffs = [abs(a - b) for a, b in zip(runs["single"]["losses"], losses, strict=True)]
    assert max(diffs) <= LOSS_TOLERANCE, diffs
    assert next(line for line in node0 if line["type"] == "done")["world_size"] == 2


# ------------------------------------------------------------------ config and launch argv


@pytest.mark.parametrize(
    ("method", "spec", "param", "reason"),
    [
        ("qlora", {"strategy": "fsdp", "nproc_per_node": 2}, "distributed.strategy", "packed uint8"),
        ("qlora", {"strategy": "deepspeed", "zero_stage": 3, "nproc_per_node": 2}, "distributed.zero_stage", "ZeRO-3"),
        (
            "lora",
            {"strategy": "deepspeed", "zero_stage": 2, "offload_params": True},
            "distributed.offload_params",
            "zero_stage 3",
        ),
        ("lora", {"strategy": "ddp", "zero_stage": 2}, "distributed.zero_stage", "only used with"),
        ("lora", {"strategy": "none", "nproc_per_node": 2}, "distributed.strategy", "need a strategy"),
        ("lora", {"strategy": "ddp", "nproc_per_node": 3}, "batch_size", "multiple of the 3 processes"),
        ("lora", {"strategy": "ddp", "nnodes": 2, "rdzv_endpoint": "a b:1"}, "distributed.rdzv_endpoint", "host:port"),
        ("lora", {"strategy": "ddp", "gpus": 2}, "distributed.gpus", "unknown distributed field"),
    ],
)
def test_contradictions_are_refused_with_the_field_and_the_reason(
    tmp_path: Path, method: str, spec: dict[str, Any], param: str, reason: str
) -> None:
    extra = {"quant_bits": 4} if method == "qlora" else {}
    with pytest.raises(ConfigError) as err:
        make_config(tmp_path, tmp_path / "out", spec, method=method, **extra)
    assert err.value.param == param and reason in err.value.message


def test_a_distributed_config_started_without_a_launcher_fails_with_a_clear_error(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code, lines = run_inprocess(make_config(tiny_model_dir, tmp_path / "out", STRATEGIES["ddp"]))
    error = lines[-1]
    assert code == 1 and error["type"] == "error" and error["code"] == "invalid_config"
    assert error["param"] == "distributed.strategy" and "WORLD_SIZE" in error["message"]


def test_launch_argvs_are_argument_lists_of_generated_values(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, tmp_path / "out", {"strategy": "fsdp", "nproc_per_node": 4})
    plan = launch_plan(cfg, "/jobs/j/attempt-1.json", python="/py", cuda=False)
    assert plan.argv == [
        "/py", "-m", "torch.distributed.run", "--nproc-per-node=4", "--nnodes=1", "--standalone",
        "--max-restarts=0", "--monitor-interval=1", "-m", "lora_engine.train", "/jobs/j/attempt-1.json",
    ]  # fmt: skip
    assert plan.env == {"DS_ACCELERATOR": "cpu"}
    multi = make_config(tmp_path, tmp_path / "out", {"strategy": "deepspeed", "nnodes": 2, "nproc_per_node": 2})
    plan = launch_plan(
        multi, "/c.json", python="/py", cuda=True, node_rank=1, master_addr="10.0.0.5", master_port=29400
    )
    assert plan.argv == [
        "/py", "-m", "deepspeed.launcher.runner", "--num_gpus=2", "--master_port=29400", "--no_ssh",
        "--num_nodes=2", "--node_rank=1", "--master_addr=10.0.0.5", "--no_local_rank",
        "--module", "lora_engine.train", "/c.json",
    ]  # fmt: skip
    assert plan.env == {}
    with pytest.raises(ValueError, match="master_port"):
        launch_plan(multi, "/c.json", python="/py", cuda=True, node_rank=1)


def test_the_deepspeed_config_keeps_the_global_batch_and_the_run_settings(tmp_path: Path) -> None:
    spec = {"strategy": "deepspeed", "zero_stage": 3, "offload_optimizer": True, "offload_params": True}
    cfg = make_config(tmp_path, tmp_path / "out", {**spec, "nproc_per_node": 2}, batch_size=8, max_grad_norm=0.5)
    ds = deepspeed_config(cfg, cuda=False)
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 2
    assert ds["train_batch_size"] == cfg.batch_size * cfg.grad_accum_steps == 16
    assert ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["bf16"] == {"enabled": False} and ds["fp16"] == {"enabled": False}
    with pytest.raises(ValueError):
        deepspeed_config(make_config(tmp_path, tmp_path / "o", STRATEGIES["ddp"]), cuda=False)


# ------------------------------------------------------------------ GPU hosts (not in CI)

GPUS = torch.cuda.device_count()


@pytest.mark.gpu
@pytest.mark.skipif(GPUS < 2, reason="needs 2 CUDA GPUs (NCCL); run on a GPU host: pytest -m gpu")
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_on_two_gpus_each_strategy_follows_the_single_gpu_loss_curve(
    tiny_model_dir: Path, tmp_path: Path, name: str
) -> None:
    """The same comparison over NCCL; fp32 on GPUs (TF32 off) keeps the CPU tolerance."""
    torch.backends.cuda.matmul.allow_tf32 = False
    single = run_to_end(make_config(tiny_model_dir, tmp_path / "single", device="cuda"))
    run = run_to_end(make_config(tiny_model_dir, tmp_path / name, STRATEGIES[name], device="cuda"))
    diffs = [abs(a - b) for a, b in zip(single["losses"], run["losses"], strict=True)]
    assert max(diffs) <= LOSS_TOLERANCE, diffs
