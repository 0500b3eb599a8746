"""Smoke test of benchmarks/lora_layer.py: the quick run writes every field with sane values.

Speed is never asserted (the machine is shared); what is checked is that every variant was
timed in every round, that the ratios and peak-memory figures exist and are positive, and
that merging changed no output.
"""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import lora_layer


@pytest.mark.slow
@pytest.mark.parametrize(("flags", "threads", "clock"), [([], None, "wall"), (["--cpu-time"], 1, "thread CPU")])
def test_quick_run_writes_ratios_memory_and_inference_rows(tmp_path, flags, threads, clock) -> None:
    out = tmp_path / "lora_layer.json"
    torch_threads = torch.get_num_threads()
    try:
        assert lora_layer.main(["--quick", *flags, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(torch_threads)  # main() sets the thread count for the process

    result = json.loads(out.read_text())
    assert result["benchmark"] == "lora_layer"
    assert result["config"]["clock"].startswith(clock)
    if threads is not None:
        assert result["config"]["threads"] == threads
    assert result["machine"]["cores"] >= 1 and "load_average_after" in result["machine"]
    assert result["config"]["quick"] is True and result["config"]["tokens"] == lora_layer.TOKENS
    rounds = result["config"]["repeats"]

    train = result["train"]
    assert [(r["rank"], r["dropout"]) for r in train] == [(16, 0.0), (16, 0.05)]
    for row in train:
        variants = {"bare", "ours", "ours_general", "peft"} | ({"ours_bits"} if row["dropout"] > 0 else set())
        assert set(row["times_s"]) == variants
        assert all(len(times) == rounds for times in row["times_s"].values())
        assert set(row["time_ratio"]) == variants - {"bare"}
        for ratio in row["time_ratio"].values():
            assert 0 < ratio["p10"] <= ratio["median"] <= ratio["p90"]
        assert all(row["overhead"][name] == row["time_ratio"][name]["median"] - 1 for name in row["overhead"])
        # the bare step allocates at least its output and input gradient (2 x 512 x 1024 floats)
        assert row["peak_bytes"]["bare"] >= 2 * 512 * 1024 * 4
        assert all(ratio > 0 for ratio in row["peak_ratio"].values())
        assert row["peak_ratio_ours_vs_peft"] > 0

    (infer,) = result["inference"]
    assert set(infer["times_s"]) == {"bare", "ours", "peft", "merged"}
    assert all(r["median"] > 0 for r in infer["time_ratio"].values())
    assert infer["unmerged_vs_merged"] > 0
    assert infer["merged_max_abs_diff"] < 1e-4  # W' = W + s·B A gives the unmerged output
