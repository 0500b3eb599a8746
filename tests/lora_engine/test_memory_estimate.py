"""The memory preflight's estimate: its arithmetic, its counts against real modules, and its error
against the measured peak of real distributed runs (``benchmarks.memory_preflight``)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from benchmarks import memory_preflight
from benchmarks.common import machine, write_result
from benchmarks.train_step import bench_model
from lora_engine.distributed import DistributedSpec
from lora_engine.lora import inject_lora
from lora_engine.memory_estimate import (
    DDP_BROADCAST_BUCKET_BYTES,
    MIB,
    ZERO3_MAX_LIVE_PARAMETERS,
    ZERO3_PREFETCH_BUCKET,
    ModelShape,
    estimate_rank_memory,
    saved_floats_per_token,
    targeted_linears,
)
from tests.lora_engine.conftest import REPO_ROOT, build_tiny_llama

# meta-llama/Llama-2-7b-hf's config.json (the fields the estimate reads).
LLAMA2_7B = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "tie_word_embeddings": False,
}
LLAMA2_7B_PARAMS = 6_738_415_616  # sum(p.numel()) of the released checkpoint
SMALL = {**LLAMA2_7B, "vocab_size": 1024, "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 8}
SMALL["num_attention_heads"] = SMALL["num_key_value_heads"] = 8
TWO = 2


def spec(strategy: str = "none", **fields: Any) -> DistributedSpec:
    if strategy in ("zero2", "zero3"):
        fields = {"strategy": "deepspeed", "zero_stage": int(strategy[-1]), **fields}
    else:
        fields = {"strategy": strategy, **fields}
    if fields["strategy"] != "none":
        fields.setdefault("nproc_per_node", TWO)
    return DistributedSpec.from_dict(fields)


def estimate(config: dict[str, Any] = LLAMA2_7B, strategy: str = "none", **overrides: Any):
    knobs: dict[str, Any] = {
        "method": "lora",
        "quant_bits": None,
        "rank": 16,
        "target_modules": ["q_proj", "v_proj"],
        "batch_size": 4,
        "grad_accum_steps": 1,
        "max_seq_len": 512,
        "gradient_checkpointing": False,
        "spec": spec(strategy),
    }
    knobs.update(overrides)
    return estimate_rank_memory(config, **knobs)


# ------------------------------------------------------------------ counts from config.json


def test_it_counts_llama_2_7b_exactly_from_its_config():
    assert ModelShape.from_config(LLAMA2_7B).total_params == LLAMA2_7B_PARAMS


@pytest.mark.parametrize("tied", [False, True])
def test_its_counts_match_a_built_model_and_the_engines_lora_injection(tied):
    config = {"vocab_size": 96, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    config |= {"num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": tied}
    model = build_tiny_llama(vocab_size=96, tie_word_embeddings=tied)
    total = sum(p.numel() for p in model.parameters())  # tied weights are one parameter
    inject_lora(model, targets=["all-linear"], rank=4, alpha=8.0)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    est = estimate(config, target_modules=["all-linear"], rank=4)
    assert ModelShape.from_config(config).total_params == total
    assert est.adapters_mb * MIB == trainable * 4  # fp32 A and B
    assert est.optimizer_mb * MIB == 2 * trainable * 4  # AdamW: two fp32 states each


def test_target_names_select_layer_linears_as_the_engine_does():
    every = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert targeted_linears(["all-linear"]) == every
    assert targeted_linears(["self_attn.q_proj", "v_proj", "lm_head"]) == ("q_proj", "v_proj")


def test_the_web_process_can_import_it_without_torch():
    code = "import sys, lora_engine.memory_estimate; print([m for m in ('torch', 'transformers') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert out.stdout.strip() == "[]"


def test_a_config_without_the_shape_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="hidden_size"):
        ModelShape.from_config({"vocab_size": 10})


# ------------------------------------------------------------------ what each choice changes


def test_zero3_and_fsdp_keep_about_one_nth_of_the_weights_ddp_keeps():
    ddp = estimate(strategy="ddp")
    for strategy in ("zero3", "fsdp"):
        mine = estimate(strategy=strategy)
        assert mine.base_weights_mb == pytest.approx(ddp.base_weights_mb / TWO, rel=0.001)
    assert estimate(strategy="zero2").base_weights_mb == ddp.base_weights_mb  # ZeRO-2 shards no parameters
    four = estimate(strategy="zero3", spec=spec("zero3", nproc_per_node=4))
    assert four.base_weights_mb == pytest.approx(ddp.base_weights_mb / 4, rel=0.001)


def test_qlora_4bit_linears_are_about_a_seventh_of_fp32():
    lora, qlora = estimate(), estimate(method="qlora", quant_bits=4)
    shape = ModelShape.from_config(LLAMA2_7B)
    linear = shape.layers * shape.layer_linear_params
    other = shape.total_params - linear
    quantized_linears = qlora.base_weights_mb * MIB - other * 4
    assert quantized_linears / (linear * 4) == pytest.approx(1 / 7.1, rel=0.01)  # 0.5 B + a fp32 absmax per 64
    # The embeddings and LM head stay fp32: the whole 7B base is ~1/5.7 of fp32.
    assert 1 / 6 < qlora.base_weights_mb / lora.base_weights_mb < 1 / 5.5
    assert estimate(method="qlora", quant_bits=8).base_weights_mb > qlora.base_weights_mb


def test_optimizer_states_and_gradients_are_sharded_by_zero_and_fsdp_only():
    ddp, zero2, fsdp = estimate(strategy="ddp"), estimate(strategy="zero2"), estimate(strategy="fsdp")
    adam = 2 * ddp.adapters_mb
    assert ddp.optimizer_mb == pytest.approx(adam)
    assert fsdp.optimizer_mb == pytest.approx(adam / TWO)
    # ZeRO-2: AdamW's states over the world, plus DeepSpeed's fp32 master partition.
    assert zero2.optimizer_mb == pytest.approx(adam / TWO + ddp.adapters_mb / TWO)
    assert zero2.gradients_mb == pytest.approx(ddp.gradients_mb / TWO)
    full = estimate(method="full", strategy="zero2")
    assert full.optimizer_mb > 10 * zero2.optimizer_mb  # 7B trainable parameters, not 4M


def test_gradient_checkpointing_lowers_activations_and_the_batch_is_split_over_ranks():
    plain, ckpt = estimate(), estimate(gradient_checkpointing=True)
    assert ckpt.activations_mb < plain.activations_mb / 5
    assert estimate(strategy="ddp").activations_mb == pytest.approx(plain.activations_mb / TWO)
    assert estimate(max_seq_len=1024).activations_mb == pytest.approx(2 * plain.activations_mb)
    # Accumulation keeps one micro-batch alive at a time.
    assert estimate(grad_accum_steps=8).total_mb == plain.total_mb


def test_zero3_gathers_the_whole_of_a_small_model_and_caps_a_large_one():
    small = estimate(SMALL, strategy="zero3")
    shape = ModelShape.from_config(SMALL)
    assert small.gathered_mb == pytest.approx(2 * shape.total_params * 4 / MIB, rel=0.01)  # live + flat buffer
    big = {**LLAMA2_7B, "num_hidden_layers": 320}  # ~65B: more than max_live_parameters
    capped = estimate(big, strategy="zero3").gathered_mb * MIB / 4
    assert capped == ZERO3_MAX_LIVE_PARAMETERS + ZERO3_PREFETCH_BUCKET


def test_ddp_peaks_while_broadcasting_the_model_when_activations_are_small():
    est = estimate(SMALL, strategy="ddp", max_seq_len=16)
    weights = ModelShape.from_config(SMALL).total_params * 4
    assert est.load_peak_mb > est.train_peak_mb and est.total_mb == est.load_peak_mb
    assert est.load_peak_mb * MIB > 2 * weights  # the weights and the flat broadcast copy
    big = estimate(strategy="ddp", max_seq_len=16)
    assert (big.load_peak_mb - est.load_peak_mb) * MIB < ModelShape.from_config(LLAMA2_7B).total_params * 4 + (
        DDP_BROADCAST_BUCKET_BYTES
    )  # the copy is one 250 MiB bucket at a time


def test_optimizer_offload_moves_states_to_the_host_on_gpus_only():
    ds = spec("zero2", offload_optimizer=True)
    gpu, cpu = estimate(strategy="zero2", spec=ds, cuda=True), estimate(strategy="zero2", spec=ds)
    assert gpu.optimizer_mb == 0 and gpu.host_offload_mb == pytest.approx(cpu.optimizer_mb)
    assert cpu.host_offload_mb == 0


def test_it_describes_itself_in_one_line_with_the_numbers():
    est = estimate(strategy="zero3")
    line = est.describe()
    assert "\n" not in line and line.startswith(f"~{est.total_mb:,.0f} MiB per process (zero3, 2 processes")
    assert f"weights {est.base_weights_mb:,.0f}" in line and f"activations {est.activations_mb:,.0f}" in line
    parts = est.breakdown()
    assert parts["total_mb"] == round(est.total_mb, 1) and parts["strategy"] == "zero3"
    assert json.loads(json.dumps(parts)) == parts


# ------------------------------------------------------------------ the activation counts


@pytest.mark.parametrize(
    ("method", "targets", "kv_heads"),
    [
        ("lora", ["q_proj", "v_proj"], 8),
        ("lora", ["all-linear"], 8),
        ("lora", ["q_proj", "v_proj"], 2),  # grouped-query attention
        ("full", [], 8),
    ],
)
def test_the_activation_count_is_what_autograd_saves(method, targets, kv_heads):
    """The floats per token the estimate counts equal what autograd saves (weights excluded)."""
    config = {**SMALL, "num_hidden_layers": 2, "num_key_value_heads": kv_heads}
    model = build_tiny_llama(
        vocab_size=1024, hidden_size=512, intermediate_size=1408, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=kv_heads, tie_word_embeddings=False,
    )  # fmt: skip
    model.config.use_cache = False
    if method == "lora":
        inject_lora(model, targets=targets, rank=16, alpha=32.0)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in weights:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    batch, seq = 2, 64
    ids = torch.randint(0, 1024, (batch, seq), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        F.cross_entropy(logits[:, :-1].reshape(-1, 1024), ids[:, 1:].reshape(-1), reduction="sum")
    measured = sum(saved.values())

    linears = targeted_linears(targets) if method == "lora" else ()
    per_token = saved_floats_per_token(ModelShape.from_config(config), method=method, linears=linears, rank=16)
    counted = batch * seq * 4 * per_token
    # Full fine-tuning also keeps the embedding output and the logits for their weight gradients.
    assert counted == pytest.approx(measured, rel=0.02 if method == "lora" else 0.12)


# ------------------------------------------------------------------ against real runs


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Each strategy once on the ~27M model (2 ranks); the table is written beside the runs (the
    committed benchmarks/results copy comes from ``python -m benchmarks.memory_preflight``)."""
    info = machine()
    model = bench_model("default")
    work = tmp_path_factory.mktemp("memory-preflight")
    rows = [memory_preflight.compare(name, model, work) for name in memory_preflight.CASES]
    write_result(
        memory_preflight.NAME,
        {
            "config": {**memory_preflight.WORKLOAD.__dict__, "model_dir": model.name, "world_size": 2},
            "rows": rows,
        },
        machine_info=info,
        out=work / f"{memory_preflight.NAME}.json",
    )
    return {row["strategy"]: row for row in rows}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(memory_preflight.CASES))
def test_the_estimate_is_within_a_quarter_of_each_ranks_measured_peak(measured, strategy):
    row = measured[strategy]
    assert len(row["measured_mb"]) == (1 if strategy == "none" else 2)
    for rank, (mine, err) in enumerate(zip(row["measured_mb"], row["error_pct"], strict=True)):
        assert abs(err) <= 25, (strategy, rank, row["estimate_mb"], mine, row["estimate"])


def test_the_reported_peak_is_the_processs_own_not_its_large_parents():
    """Linux keeps getrusage's ru_maxrss across fork and exec: a run started by a big worker (or
    this test runner) would report the parent's size as its peak. The engine reads VmHWM."""
    ballast = bytearray(600 * 2**20)
    ballast[::4096] = b"\1" * len(range(0, len(ballast), 4096))  # touch every page: resident
    code = "from lora_engine.train import _peak_rss_mb; print(_peak_rss_mb())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert float(out.stdout) < 550, out.stdout  # the child alone: interpreter + torch, well under the ballast
    assert len(ballast) == 600 * 2**20
