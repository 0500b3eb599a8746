"""Smoke test of the training-step benchmark: its --quick run writes every field with sane values.

Speed is never asserted (the machine is shared); counts, ratios and the FLOP formula are.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import train_step
from lora_engine.data import Example


def test_it_counts_useful_flops_as_six_n_for_full_fine_tuning():
    # Full fine-tuning: every matmul parameter is trainable -> 6 * P per token, plus attention.
    assert train_step.useful_flops(params=10, trainable=10, tokens=3, context=0, layers=1, hidden=4) == 6 * 10 * 3
    # LoRA: the frozen weights need no weight gradient -> 4 * P + 2 * P_trainable.
    assert train_step.useful_flops(params=10, trainable=1, tokens=3, context=0, layers=1, hidden=4) == (40 + 2) * 3
    # Attention: 12 * layers * hidden per attended key (fwd 4, bwd 8).
    assert train_step.useful_flops(params=0, trainable=0, tokens=0, context=5, layers=2, hidden=4) == 12 * 2 * 4 * 5


def test_it_counts_causal_context_per_packed_example():
    # A row packing examples of 3 and 2 tokens attends 1+2+3 and 1+2 keys, not 5*6/2.
    assert train_step.attention_context([[3, 2]]) == 6 + 3
    packed = Example([1] * 5, [1] * 5, 1, lengths=(3, 2))
    assert train_step.epoch_context([packed, Example([1] * 4, [1] * 4, 2)]) == 9 + 10


def test_it_writes_sft_examples_of_the_requested_lengths(tmp_path):
    path = train_step.write_sft_data(tmp_path / "d.jsonl", n=20, min_len=32, max_len=512)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 20
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in rows)
    words = [len(r["messages"][0]["content"].split()) + len(r["messages"][1]["content"].split()) for r in rows]
    assert min(words) < 100 < 250 < max(words)  # varied lengths, not one shape
    assert (
        path.read_text() == train_step.write_sft_data(tmp_path / "e.jsonl", n=20, min_len=32, max_len=512).read_text()
    )


@pytest.mark.slow
def test_quick_run_writes_every_field(tmp_path):
    out = tmp_path / "train_step.json"
    assert train_step.main(["--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "train_step"
    assert result["machine"]["cores"] >= 1 and "load_average_after" in result["machine"]
    sft, synth, methods = result["sft"], result["synthetic"], result["methods"]
    rounds = result["config"]["rounds"]

    # Same data on both sides: every timed epoch of each side saw every real token once.
    for name in ("ours (padded)", "ours (packed)", "transformers+peft"):
        assert [r["tokens"] for r in sft["raw"][name]] == [sft["tokens_per_epoch"]] * rounds
        assert sft["tokens_per_s"][name]["median"] > 0
        assert sft["flops"][name]["share_of_ceiling"] > 0
    assert sft["packed_rows"] < sft["examples"]
    assert sft["packed_row_tokens"] == sft["tokens_per_epoch"]  # packing adds no padding
    assert sft["padded_tokens_per_epoch"] > sft["tokens_per_epoch"]  # padding to the longest row does
    assert 0 < sft["label_tokens_per_epoch"] < sft["tokens_per_epoch"]  # assistant-only labels
    assert sft["ratio_vs_peft"]["ours (padded)"]["median"] > 0
    assert sft["ratio_vs_peft"]["ours (packed)"]["median"] > 0

    batch, seq = synth["shape"]
    assert [r["tokens"] for r in synth["raw"]["ours"]] == [batch * seq * synth["steps_per_timing"]] * rounds
    assert synth["ratio_vs_peft"]["median"] > 0
    # Same model on both sides: the same matmul parameters; the same LoRA factors.
    model = result["model"]
    assert model["trainable_params_ours"] == model["trainable_params_peft"] > 0
    assert model["matmul_params"] < model["params_total"]
    assert result["matmul_ceiling"]["median"] > 0

    med = methods["median"]
    assert set(med) == {"lora", "full", "qlora"}
    assert all(m["tokens_per_s"] > 0 and m["peak_rss_mb"] > m["rss_before_model_mb"] > 0 for m in med.values())
    # Full fine-tuning keeps AdamW state for every weight; LoRA only for the factors.
    assert med["full"]["optimizer_state_mb"] > 5 * med["lora"]["optimizer_state_mb"]
    # nf4 stores the block linears in ~0.52 bytes/param instead of 4.
    assert med["lora"]["base_bytes_per_param"] == pytest.approx(4.0)
    assert med["qlora"]["base_bytes_per_param"] < 0.6
    assert methods["qlora_vs_lora_base_linear_weights"] < 0.3
    assert methods["lora_vs_full_tokens_per_s"] > 0 and methods["qlora_vs_lora_peak_rss"] > 0
