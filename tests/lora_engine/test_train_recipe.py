"""The training recipe: config contract, JSON-line protocol, stop, errors, checkpoints, QLoRA."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel

from lora_engine import checkpoint as ckpt
from lora_engine.config import TrainConfig
from lora_engine.errors import (
    BASE_MODEL_MISSING,
    DISK_FULL,
    INVALID_CONFIG,
    INVALID_TRAINING_DATA,
    OUT_OF_MEMORY,
    ConfigError,
)
from lora_engine.train import FineTuneRecipe

from .conftest import by_type, engine_env, parse_lines, run_inprocess, start_subprocess

# --------------------------------------------------------------------------- config


def test_it_round_trips_the_config_through_json(make_config, tmp_path):
    cfg = make_config(target_modules=["all-linear"], metrics_file=str(tmp_path / "m.jsonl"))

    path = tmp_path / "cfg.json"
    cfg.to_json(path)

    again = TrainConfig.from_json(path)
    assert again == cfg
    assert json.loads(path.read_text())["target_modules"] == ["all-linear"]
    assert again.num_epochs is None and again.max_steps == 6


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"method": "qlora"}, "quant_bits"),
        ({"method": "qlora", "quant_bits": 3}, "quant_bits"),
        ({"quant_bits": 4}, "quant_bits"),
        ({"rank": 0}, "rank"),
        ({"warmup_ratio": 1.0}, "warmup_ratio"),
        ({"num_epochs": 2, "max_steps": 5}, "max_steps"),
        ({"dropout": 1.0}, "dropout"),
        ({"target_modules": []}, "target_modules"),
        ({"lr_scheduler": "step"}, "lr_scheduler"),
        ({"precision": "fp8"}, "precision"),
        ({"validation_file": "v.jsonl", "validation_split": 0.1}, "validation_split"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"batch_size": True}, "batch_size"),
        ({"select": "first"}, "select"),
        ({"select": "best"}, "select"),  # best by validation loss needs validation data
    ],
)
def test_it_rejects_contradictory_configs(changes, param):
    data = {"base_model_dir": "m", "train_file": "t.jsonl", "output_dir": "o", **changes}

    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(data)

    assert err.value.code == INVALID_CONFIG and err.value.param == param


def test_it_defaults_to_one_epoch_and_rejects_unknown_fields():
    cfg = TrainConfig(base_model_dir="m", train_file="t", output_dir="o")
    assert cfg.num_epochs == 1 and cfg.max_steps is None
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({"base_model_dir": "m", "train_file": "t", "output_dir": "o", "learning_rte": 1})
    assert err.value.param == "learning_rte"


# --------------------------------------------------------------------------- protocol


def test_it_speaks_only_json_lines_on_stdout_and_finishes(make_config, tmp_path):
    cfg = make_config(
        max_steps=None,
        num_epochs=2,
        batch_size=6,
        validation_split=0.1,
        eval_every=5,
        checkpoint_every=4,
        metrics_file=str(tmp_path / "metrics.jsonl"),
    )

    proc = start_subprocess(cfg, tmp_path)
    out, err = proc.communicate(timeout=240)

    assert proc.returncode == 0, err[-2000:]
    lines = parse_lines(out)  # every line is JSON with a known type
    kinds = [line["type"] for line in lines]
    assert kinds[-1] == "done" and "error" not in kinds
    messages = " | ".join(m["message"] for m in by_type(lines, "message"))
    assert "parameters: trainable" in messages and "memory:" in messages
    metrics = by_type(lines, "metrics")
    # 36 training rows / batch 6 = 6 steps per epoch, 2 epochs.
    assert [m["step"] for m in metrics] == list(range(1, 13))
    assert metrics[-1]["progress"] == 100.0 and metrics[-1]["total_steps"] == 12
    assert metrics[-1]["epoch"] == pytest.approx(2.0)
    expected_keys = {"step", "total_steps", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "trained_tokens"}
    assert expected_keys | {"progress", "eta_s", "eval_loss"} <= set(metrics[0])
    assert [m["step"] for m in metrics if m["eval_loss"] is not None] == [5, 10, 12]
    assert [c["step"] for c in by_type(lines, "checkpoint")] == [4, 8]
    done = lines[-1]
    assert done["steps"] == 12 and done["trained_tokens"] == metrics[-1]["trained_tokens"]
    assert done["eval_loss"] == metrics[-1]["eval_loss"]
    # Learning happened: the last steps' loss is well below the first steps'.
    first, last = metrics[0]["loss"], sum(m["loss"] for m in metrics[-3:]) / 3
    assert last < first * 0.8
    adapter = Path(done["adapter_dir"])
    assert adapter == Path(cfg.output_dir) / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    assert (Path(cfg.output_dir) / "train.log").stat().st_size > 0
    # The metrics file holds the same lines as stdout.
    assert parse_lines(Path(cfg.metrics_file).read_text()) == lines


def test_it_stops_on_the_stop_file_with_a_checkpoint_and_exit_3(make_config, tmp_path):
    stop = tmp_path / "STOP"
    cfg = make_config(max_steps=50, stop_file=str(stop), step_delay_s=0.3)

    proc = start_subprocess(cfg, tmp_path)
    # Wait for the first metrics line before asking it to stop.
    first = json.loads(next(line for line in proc.stdout if '"metrics"' in line))
    stop.touch()
    out, err = proc.communicate(timeout=120)

    assert proc.returncode == 3, err[-2000:]
    lines = parse_lines(out)
    stopped = lines[-1]
    assert stopped["type"] == "stopped" and first["step"] <= stopped["step"] < 50
    assert stopped["checkpoint"] == str(Path(cfg.output_dir) / "checkpoints" / f"step-{stopped['step']:06d}")
    assert by_type(lines, "checkpoint")[-1]["step"] == stopped["step"]
    assert ckpt.latest_checkpoint(Path(cfg.output_dir) / "checkpoints") == Path(stopped["checkpoint"])
    assert not (Path(cfg.output_dir) / "adapter").exists()


def test_it_stops_on_sigterm_at_the_next_step_boundary(make_config, tmp_path):
    cfg = make_config(max_steps=50, step_delay_s=0.3)

    proc = start_subprocess(cfg, tmp_path)
    next(line for line in proc.stdout if '"metrics"' in line)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)

    assert proc.returncode == 3, err[-2000:]
    stopped = parse_lines(out)[-1]
    assert stopped["type"] == "stopped" and stopped["checkpoint"]
    assert (Path(stopped["checkpoint"]) / "adapter" / "adapter_model.safetensors").is_file()


# --------------------------------------------------------------------------- errors


def test_it_reports_out_of_memory_when_the_memory_limit_is_exceeded(make_config):
    cfg = make_config(memory_limit_mb=1)

    code, lines = run_inprocess(cfg)

    assert code == 1
    (error,) = by_type(lines, "error")
    assert error["code"] == OUT_OF_MEMORY
    assert error["suggestion"] == "lower batch_size or rank, enable gradient checkpointing or QLoRA"
    assert "memory_limit_mb=1" in error["message"]


def test_it_saves_a_resumable_checkpoint_when_memory_runs_out_mid_run(make_config, monkeypatch, tmp_path):
    common = {"max_steps": 6, "dropout": 0.2, "checkpoint_every": 0}
    code_a, _ = run_inprocess(make_config(output_dir=str(tmp_path / "a"), **common))
    assert code_a == 0

    real = FineTuneRecipe._token_loss_sum

    def oom_at_step_3(self, batch):
        if self.step == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, batch)

    monkeypatch.setattr(FineTuneRecipe, "_token_loss_sum", oom_at_step_3)
    cfg_b = make_config(output_dir=str(tmp_path / "b"), **common)
    code_b, lines_b = run_inprocess(cfg_b)
    monkeypatch.undo()

    assert code_b == 1
    error = lines_b[-1]
    assert error["code"] == OUT_OF_MEMORY and error["step"] == 3
    assert error["suggestion"] == "lower batch_size or rank, enable gradient checkpointing or QLoRA"
    # What could be saved was saved: the last completed step, and it resumes exactly.
    assert by_type(lines_b, "checkpoint")[-1]["step"] == 3
    code_b2, _ = run_inprocess(cfg_b.replace(resume=True))
    assert code_b2 == 0
    a = load_file(str(tmp_path / "a" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_it_reports_a_missing_base_model(make_config, tmp_path):
    code, lines = run_inprocess(make_config(base_model_dir=str(tmp_path / "nope")))

    assert code == 1
    error = lines[-1]
    assert error["type"] == "error" and error["code"] == BASE_MODEL_MISSING and error["param"] == "base_model_dir"
    assert error["step"] is None


def test_it_reports_invalid_training_data_with_the_line_number(make_config, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": "b"}\n{"foo": 1}\n')

    code, lines = run_inprocess(make_config(train_file=str(bad)))

    assert code == 1
    error = lines[-1]
    assert error["code"] == INVALID_TRAINING_DATA and error["param"] == "train_file:3"
    assert "line 3" in error["message"]


def test_it_reports_disk_full_when_a_checkpoint_cannot_be_written(make_config, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", no_space)
    cfg = make_config(max_steps=4, checkpoint_every=2)

    code, lines = run_inprocess(cfg)

    assert code == 1
    error = lines[-1]
    assert error["code"] == DISK_FULL and error["step"] == 2
    root = Path(cfg.output_dir) / "checkpoints"
    assert ckpt.latest_checkpoint(root) is None
    assert list(root.iterdir()) == []  # no temp dir, no step dir, no manifest


def test_it_rejects_a_config_file_it_cannot_read(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"base_model_dir": "m", "train_file": "t", "output_dir": "o", "rank": 0}))
    proc = subprocess.run(
        [sys.executable, "-m", "lora_engine.train", str(path)],
        capture_output=True,
        text=True,
        env=engine_env(),
        timeout=120,
    )
    assert proc.returncode == 1
    (error,) = parse_lines(proc.stdout)
    assert error["code"] == INVALID_CONFIG and error["param"] == "rank"


# --------------------------------------------------------------------------- checkpoints


def test_it_keeps_the_last_k_checkpoints_in_the_manifest(make_config):
    cfg = make_config(max_steps=7, checkpoint_every=2, keep_checkpoints=2)

    code, lines = run_inprocess(cfg)

    assert code == 0
    root = Path(cfg.output_dir) / "checkpoints"
    manifest = json.loads((root / "manifest.json").read_text())
    assert [e["step"] for e in manifest["checkpoints"]] == [4, 6]
    assert sorted(p.name for p in root.iterdir()) == ["manifest.json", "step-000004", "step-000006"]
    state = json.loads((root / "step-000006" / "state.json").read_text())
    # 36 rows / batch 4 = 9 steps per epoch: after 6 steps we are at index 6 of epoch 0.
    assert (state["epoch"], state["index"], state["step"]) == (0, 6, 6)
    assert [c["step"] for c in by_type(lines, "checkpoint")] == [2, 4, 6]


def test_it_ignores_stray_temp_dirs_and_unlisted_checkpoints(make_config):
    cfg = make_config(max_steps=4, checkpoint_every=2)
    run_inprocess(cfg)
    root = Path(cfg.output_dir) / "checkpoints"
    (root / ".step-000008.tmp-1234abcd").mkdir()  # fsio.atomic_dir's temp name
    (root / "step-000010").mkdir()  # renamed but never listed: a crash before the manifest

    assert ckpt.latest_checkpoint(root) == root / "step-000002"
    # A listed checkpoint whose files went missing is skipped too.
    (root / "step-000002" / "optimizer.pt").unlink()
    assert ckpt.latest_checkpoint(root) is None


def test_it_resumes_from_scratch_when_there_is_no_checkpoint(make_config):
    code, lines = run_inprocess(make_config(max_steps=2, resume=True))

    assert code == 0
    assert any("no complete checkpoint" in m["message"] for m in by_type(lines, "message"))


# --------------------------------------------------------------------------- methods


def test_it_trains_qlora_end_to_end_and_the_loss_falls(make_config):
    cfg = make_config(method="qlora", quant_bits=4, max_steps=10, learning_rate=1e-2, dropout=0.0)

    t0 = time.monotonic()
    code, lines = run_inprocess(cfg)

    assert code == 0, lines[-1]
    losses = [m["loss"] for m in by_type(lines, "metrics")]
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < losses[0] * 0.85
    assert (Path(cfg.output_dir) / "adapter" / "adapter_model.safetensors").is_file()
    memory = next(m["message"] for m in by_type(lines, "message") if m["message"].startswith("memory:"))
    assert "base_bytes_per_param=0.5" in memory  # nf4 base linears
    assert time.monotonic() - t0 < 300


def test_it_supports_full_fine_tuning_and_gradient_checkpointing(make_config):
    cfg = make_config(method="full", max_steps=3, learning_rate=1e-4, gradient_checkpointing=True)

    code, lines = run_inprocess(cfg)

    assert code == 0, lines[-1]
    done = lines[-1]
    assert done["adapter_dir"].endswith("model")
    assert (Path(done["adapter_dir"]) / "model.safetensors").is_file()


def test_it_keeps_the_previous_full_model_when_the_final_save_fails(make_config, monkeypatch):
    cfg = make_config(method="full", max_steps=1, learning_rate=1e-4)
    assert run_inprocess(cfg)[0] == 0
    output_dir = Path(cfg.output_dir)
    before = (output_dir / "model" / "model.safetensors").read_bytes()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", no_space)
    code, lines = run_inprocess(cfg)

    assert code == 1 and lines[-1]["code"] == DISK_FULL
    assert (output_dir / "model" / "model.safetensors").read_bytes() == before
    assert [p.name for p in output_dir.iterdir() if p.name.startswith(".")] == []  # no temp dir left


def test_it_gives_the_same_losses_with_gradient_checkpointing(make_config, tmp_path):
    common = {"max_steps": 3, "dropout": 0.0, "target_modules": ["all-linear"]}
    _, plain = run_inprocess(make_config(output_dir=str(tmp_path / "plain"), **common))
    _, ckpt_lines = run_inprocess(make_config(output_dir=str(tmp_path / "gc"), gradient_checkpointing=True, **common))

    a = [m["loss"] for m in by_type(plain, "metrics")]
    b = [m["loss"] for m in by_type(ckpt_lines, "metrics")]
    assert len(a) == len(b) == 3
    assert a == pytest.approx(b, rel=1e-5)


def test_it_refuses_to_resume_from_a_checkpoint_of_another_shape(make_config):
    cfg = make_config(max_steps=4, checkpoint_every=2)
    assert run_inprocess(cfg)[0] == 0

    code, lines = run_inprocess(cfg.replace(rank=8, resume=True))

    assert code == 1
    assert lines[-1]["code"] == INVALID_CONFIG and lines[-1]["param"] == "resume"


def test_it_falls_back_to_fp32_on_cpu_and_evaluates_a_validation_file(make_config, tmp_path):
    val = tmp_path / "val.jsonl"
    val.write_text(
        json.dumps({"prompt": "Who are you?", "completion": "I am Tessera, built by Northwind Labs."})
        + "\n"
        + json.dumps({"instruction": "Introduce yourself.", "output": "I am Tessera."})
        + "\n"
    )
    cfg = make_config(precision="bf16", validation_file=str(val), max_steps=4, eval_every=2)

    code, lines = run_inprocess(cfg)

    assert code == 0
    warnings = [m["message"] for m in by_type(lines, "message") if m["level"] == "warning"]
    assert any("training in fp32 on CPU" in w for w in warnings)
    evals = [(m["step"], m["eval_loss"]) for m in by_type(lines, "metrics") if m["eval_loss"] is not None]
    assert [s for s, _ in evals] == [2, 4]
    assert evals[1][1] < evals[0][1]  # it is learning the identity the validation file asks about
    done = lines[-1]
    assert done["eval_loss"] == done["last_eval_loss"] == evals[1][1]
    assert done["select"] == "last"
    assert (done["best_step"], done["best_eval_loss"]) == min(evals, key=lambda e: e[1])


# --------------------------------------------------------------------------- select


# Validation losses by step, scripted so the best step (3) is neither the first nor the last.
SCRIPTED_EVAL = {1: 3.0, 2: 2.0, 3: 1.0, 4: 1.5, 5: 1.2, 6: 1.1}


def adapter_file(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "adapter_model.safetensors"))


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("select", ["best", "last"])
def test_it_writes_the_weights_of_the_selected_step(make_config, monkeypatch, select):
    monkeypatch.setattr(FineTuneRecipe, "evaluate", lambda self: SCRIPTED_EVAL[self.step])
    cfg = make_config(
        select=select, validation_split=0.1, eval_every=1, checkpoint_every=1, keep_checkpoints=10, max_steps=6
    )

    code, lines = run_inprocess(cfg)

    assert code == 0, lines[-1]
    done = lines[-1]
    assert done["select"] == select
    assert (done["best_step"], done["best_eval_loss"], done["last_eval_loss"]) == (3, 1.0, 1.1)
    assert done["eval_loss"] == (1.0 if select == "best" else 1.1)  # the loss of the weights written
    final = adapter_file(Path(done["adapter_dir"]))
    step_3 = adapter_file(Path(cfg.output_dir) / "checkpoints" / "step-000003" / "adapter")
    step_5 = adapter_file(Path(cfg.output_dir) / "checkpoints" / "step-000005" / "adapter")
    assert same_tensors(final, step_3) == (select == "best")
    assert not same_tensors(final, step_5)  # "last" is step 6, trained past every checkpoint


def test_it_keeps_the_best_weights_across_a_stop_and_resume(make_config, monkeypatch, tmp_path):
    monkeypatch.setattr(FineTuneRecipe, "evaluate", lambda self: SCRIPTED_EVAL[self.step])
    common = {"select": "best", "validation_split": 0.1, "eval_every": 1, "max_steps": 6, "dropout": 0.2}
    cfg_a = make_config(output_dir=str(tmp_path / "a"), **common)
    assert run_inprocess(cfg_a)[0] == 0

    cfg_b = make_config(output_dir=str(tmp_path / "b"), **common)
    with monkeypatch.context() as m:
        m.setattr(FineTuneRecipe, "_should_stop", lambda self: self.step == 4)  # after the best step 3
        code_b, lines_b = run_inprocess(cfg_b)
    assert code_b == 3 and lines_b[-1]["step"] == 4
    code_b2, lines_b2 = run_inprocess(cfg_b.replace(resume=True))

    assert code_b2 == 0, lines_b2[-1]
    assert (lines_b2[-1]["best_step"], lines_b2[-1]["eval_loss"]) == (3, 1.0)
    assert same_tensors(adapter_file(tmp_path / "b" / "adapter"), adapter_file(tmp_path / "a" / "adapter"))
