"""Gradient monitor: NaN/Inf loss or gradients stop the run with nan_detected and no adapter."""

from __future__ import annotations

from pathlib import Path

import torch

from lora_engine.errors import NAN_DETECTED
from lora_engine.train import FineTuneRecipe

from .conftest import by_type, run_inprocess


def test_it_stops_with_nan_detected_when_the_learning_rate_explodes(make_config):
    cfg = make_config(learning_rate=1e6, max_grad_norm=None, max_steps=8, checkpoint_every=0)

    code, lines = run_inprocess(cfg)

    assert code == 1
    (error,) = by_type(lines, "error")
    assert error["code"] == NAN_DETECTED
    assert "learning_rate" in error["suggestion"] and error["param"] == "learning_rate"
    assert isinstance(error["step"], int) and error["step"] < 8
    assert lines[-1] == error  # nothing after the error line
    assert not by_type(lines, "done")
    assert not (Path(cfg.output_dir) / "adapter").exists()


def test_it_catches_a_nan_loss_mid_run_without_checkpointing_poisoned_weights(make_config, monkeypatch):
    real = FineTuneRecipe._token_loss_sum

    def poisoned(self, batch):
        loss = real(self, batch)
        return loss * float("nan") if self.step == 3 else loss

    monkeypatch.setattr(FineTuneRecipe, "_token_loss_sum", poisoned)
    cfg = make_config(max_steps=6, checkpoint_every=2)

    code, lines = run_inprocess(cfg)

    assert code == 1
    error = by_type(lines, "error")[0]
    assert error["code"] == NAN_DETECTED and error["step"] == 3
    assert "step 4" in error["message"]  # the failing step, 1-based
    # Only the regular checkpoint of step 2 exists; the failed step left none behind.
    assert [c["step"] for c in by_type(lines, "checkpoint")] == [2]
    assert sorted(p.name for p in (Path(cfg.output_dir) / "checkpoints").glob("step-*")) == ["step-000002"]
    assert not (Path(cfg.output_dir) / "adapter").exists()


def test_it_logs_a_finite_grad_norm_and_clips_it(make_config):
    cfg = make_config(max_steps=3, max_grad_norm=1e-3, learning_rate=1e-3)

    code, lines = run_inprocess(cfg)

    assert code == 0
    norms = [m["grad_norm"] for m in by_type(lines, "metrics")]
    assert len(norms) == 3
    # The logged norm is the pre-clip norm, so it can exceed the clip value.
    assert all(torch.isfinite(torch.tensor(n)) and n > 1e-3 for n in norms)
