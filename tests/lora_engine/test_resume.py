"""Kill-and-resume: a resumed run reproduces the uninterrupted run's losses and adapter exactly."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from lora_engine import checkpoint as ckpt
from lora_engine.manifest import STATE_FILES, adopt_checkpoint, read_manifest
from lora_engine.train import FineTuneRecipe

from .conftest import by_type, parse_lines, run_inprocess, start_subprocess


def adapter_tensors(output_dir: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(output_dir) / "adapter" / "adapter_model.safetensors"))


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = {k: float((a[k] - b[k]).abs().max()) for k in a if not torch.equal(a[k], b[k])}
    assert not differ, differ


def losses(lines: list[dict]) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in by_type(lines, "metrics")}


def test_it_resumes_after_sigkill_with_the_same_losses_and_adapter(make_config, tmp_path):
    # Dropout on and gradient accumulation: the RNG state and the data position must both
    # be restored for the trajectories to match.
    common = {
        "max_steps": 12,
        "checkpoint_every": 3,
        "keep_checkpoints": 5,
        "grad_accum_steps": 2,
        "dropout": 0.2,
        "warmup_ratio": 0.2,
        "seed": 11,
    }
    cfg_a = make_config(output_dir=str(tmp_path / "a"), **common)
    cfg_b = make_config(output_dir=str(tmp_path / "b"), step_delay_s=0.4, **common)

    proc_a = start_subprocess(cfg_a, tmp_path, "a.json")
    out_a, err_a = proc_a.communicate(timeout=240)
    assert proc_a.returncode == 0, err_a[-2000:]
    lines_a = parse_lines(out_a)

    proc_b = start_subprocess(cfg_b, tmp_path, "b.json")
    seen = []
    for raw in proc_b.stdout:
        seen.append(json.loads(raw))
        if seen[-1]["type"] == "checkpoint" and seen[-1]["step"] == 6:
            proc_b.send_signal(signal.SIGKILL)  # no chance to clean up
            break
    proc_b.communicate(timeout=60)
    assert proc_b.returncode == -signal.SIGKILL
    assert not (tmp_path / "b" / "adapter").exists()

    cfg_b2 = cfg_b.replace(resume=True, step_delay_s=0.0)
    proc_b2 = start_subprocess(cfg_b2, tmp_path, "b2.json")
    out_b2, err_b2 = proc_b2.communicate(timeout=240)
    assert proc_b2.returncode == 0, err_b2[-2000:]
    lines_b2 = parse_lines(out_b2)

    resumed = next(m["message"] for m in by_type(lines_b2, "message") if m["message"].startswith("resumed"))
    k = int(resumed.split(" at step ")[1].split(" ")[0])
    assert k >= 6
    loss_a, loss_b, loss_b2 = losses(lines_a), losses(seen), losses(lines_b2)
    assert sorted(loss_b2) == list(range(k + 1, 13))
    assert all(loss_b[s] == loss_a[s] for s in loss_b)  # before the kill
    assert all(loss_b2[s] == loss_a[s] for s in loss_b2), (loss_a, loss_b2)  # after the resume
    done_a, done_b2 = lines_a[-1], lines_b2[-1]
    assert done_a["type"] == done_b2["type"] == "done"
    assert done_b2["trained_tokens"] == done_a["trained_tokens"]
    assert done_b2["final_loss"] == done_a["final_loss"]

    assert_bitwise_equal(adapter_tensors(cfg_a.output_dir), adapter_tensors(cfg_b.output_dir))


def test_it_resumes_a_stopped_packed_run_exactly_in_process(make_config, monkeypatch, tmp_path):
    common = {"max_steps": 8, "checkpoint_every": 0, "packing": True, "max_seq_len": 96, "seed": 5, "dropout": 0.3}
    cfg_a = make_config(output_dir=str(tmp_path / "a"), **common)
    code_a, lines_a = run_inprocess(cfg_a)
    assert code_a == 0

    cfg_b = make_config(output_dir=str(tmp_path / "b"), **common)
    monkeypatch.setattr(FineTuneRecipe, "_should_stop", lambda self: self.step == 5)
    code_b, lines_b = run_inprocess(cfg_b)
    assert code_b == 3 and lines_b[-1] == {
        "type": "stopped",
        "step": 5,
        "checkpoint": str(tmp_path / "b" / "checkpoints" / "step-000005"),
    }
    monkeypatch.undo()

    code_b2, lines_b2 = run_inprocess(cfg_b.replace(resume=True))
    assert code_b2 == 0
    assert losses(lines_b2) == {s: v for s, v in losses(lines_a).items() if s > 5}
    assert_bitwise_equal(adapter_tensors(cfg_a.output_dir), adapter_tensors(cfg_b.output_dir))


def draw() -> tuple[float, ...]:
    # gauss() and randn() keep a cached second normal: their state must survive too.
    return (
        random.random(),
        random.gauss(0, 1),
        float(np.random.rand()),
        float(np.random.randn()),
        float(torch.rand(1)),
    )


def test_it_restores_every_rng_stream_from_a_file_without_pickle(tmp_path):
    random.gauss(0, 1)
    np.random.randn()  # leave a cached normal in both generators
    path = tmp_path / ckpt.RNG_FILE
    ckpt.save_rng_state(ckpt.rng_state(), path)
    expected = draw()

    ckpt.set_rng_state(ckpt.load_rng_state(path))

    assert draw() == expected
    load_file(str(path))  # a plain safetensors file: tensors and string metadata, nothing to unpickle


def test_it_writes_no_pickled_rng_state_in_a_checkpoint(make_config):
    cfg = make_config(max_steps=3, checkpoint_every=2)
    assert run_inprocess(cfg)[0] == 0

    step_dir = Path(cfg.output_dir) / "checkpoints" / "step-000002"
    assert (step_dir / ckpt.RNG_FILE).is_file() and not (step_dir / ckpt.LEGACY_RNG_FILE).exists()


class Trap:
    """Unpickling this creates the marker file: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_it_resumes_an_old_checkpoint_without_unpickling_its_rng_pt(make_config, tmp_path):
    cfg = make_config(max_steps=4, checkpoint_every=2)
    assert run_inprocess(cfg)[0] == 0
    step_dir = Path(cfg.output_dir) / "checkpoints" / "step-000002"
    # What an older engine left: a pickled rng.pt instead of rng.safetensors.
    (step_dir / ckpt.RNG_FILE).unlink()
    marker = tmp_path / "unpickled"
    torch.save({"python": Trap(marker)}, step_dir / ckpt.LEGACY_RNG_FILE)

    code, lines = run_inprocess(cfg.replace(resume=True))

    assert code == 0, lines[-1]
    assert not marker.exists()
    warning = next(m["message"] for m in by_type(lines, "message") if m["level"] == "warning")
    assert "rng.pt" in warning and "not loaded" in warning
    assert [m["step"] for m in by_type(lines, "metrics")] == [3, 4]  # weights and position were resumed


# --- a new attempt's run dir starts from an earlier attempt's checkpoint ------------------


def fake_run(root: Path, steps: list[int], *, complete: bool = True) -> Path:
    """A checkpoint root listing ``steps``, each dir holding every state file (or all but one)."""
    for step in steps:
        d = root / ckpt.step_dir_name(step)
        (d / "adapter").mkdir(parents=True)
        (d / "adapter" / "adapter_model.safetensors").write_text(f"adapter {step}")
        for name in STATE_FILES if complete else STATE_FILES[:-1]:
            (d / name).write_text(f"{name} {step}")
    entries = [{"step": s, "dir": ckpt.step_dir_name(s), "created_at": 1.0, "metrics": {"loss": s}} for s in steps]
    root.mkdir(parents=True, exist_ok=True)
    (root / ckpt.MANIFEST).write_text(json.dumps({"version": 1, "checkpoints": entries}))
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.rglob("*"))}


def test_it_adopts_the_newest_complete_checkpoint_of_earlier_attempts_by_hard_links(tmp_path):
    one = fake_run(tmp_path / "attempt-1" / "checkpoints", [2, 4])
    two = fake_run(tmp_path / "attempt-2" / "checkpoints", [6], complete=False)  # listed, but a file is missing
    (one / "step-000008").mkdir()  # on disk but never listed: not a checkpoint
    before = snapshot(tmp_path)
    new_root = tmp_path / "attempt-3" / "checkpoints"

    adopted = adopt_checkpoint([one, two], new_root)

    assert adopted is not None and (adopted.step, adopted.source) == (4, one / "step-000004")
    assert adopted.path == new_root / "step-000004"
    assert ckpt.latest_checkpoint(new_root) == adopted.path
    assert read_manifest(new_root)["checkpoints"] == [
        {"step": 4, "dir": "step-000004", "created_at": 1.0, "metrics": {"loss": 4}}
    ]
    for name in (*STATE_FILES, "adapter/adapter_model.safetensors"):
        assert (adopted.path / name).stat().st_ino == (one / "step-000004" / name).stat().st_ino
    # Nothing of the earlier attempts was written, moved or removed.
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("attempt-3")} == before


def test_it_adopts_nothing_when_no_earlier_attempt_left_a_complete_checkpoint(tmp_path):
    partial = fake_run(tmp_path / "a" / "checkpoints", [2], complete=False)
    assert adopt_checkpoint([partial, tmp_path / "missing"], tmp_path / "b" / "checkpoints") is None
    assert not (tmp_path / "b" / "checkpoints" / ckpt.MANIFEST).exists()


def test_it_never_follows_a_manifest_entry_out_of_its_own_directory(tmp_path, make_config):
    victim = tmp_path / "victim"
    fake_run(victim, [1])
    root = tmp_path / "run" / "checkpoints"
    entries = [{"step": 0, "dir": "../../victim/step-000001", "created_at": 1.0, "metrics": {}}]
    root.mkdir(parents=True)
    (root / ckpt.MANIFEST).write_text(json.dumps({"version": 1, "checkpoints": entries}))
    # Neither adopted from nor pruned: a manifest names entries of its own root only.
    assert adopt_checkpoint([root], tmp_path / "next" / "checkpoints") is None
    cfg = make_config(output_dir=str(tmp_path / "run"), max_steps=2, checkpoint_every=1, keep_checkpoints=1)
    assert run_inprocess(cfg)[0] == 0
    assert (victim / "step-000001" / "state.json").is_file()
