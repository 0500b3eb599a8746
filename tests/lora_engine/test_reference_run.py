"""Run-level parity: a short run of our recipe against transformers + PEFT on the same run.

The short version of ``benchmarks/reference_run.py`` (see its docstring for what is shared
and what differs by design). Both sides run fp32 on CPU from the same seed; the only
differences left are fp32 rounding (our fused LoRA GEMMs vs PEFT's separate ones, our
cross-entropy vs transformers' loss), about 1e-7 relative here, so the bounds are tight
enough that a change in loss normalisation, LR schedule, clipping, weight decay, label
shift or dropout placement fails this test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.reference_run import benchmark_config, compare, pad_rows, run_ours, run_reference, write_data
from lora_engine.data import IGNORE_INDEX, BatchSchedule

# Measured: <= 1e-7 on both; 100x margin for other BLAS builds and thread counts.
STEP_REL_BOUND = 1e-5
EVAL_REL_BOUND = 1e-5


@pytest.fixture
def short_config(tiny_model_dir: Path, tmp_path: Path):
    train, val = write_data(tmp_path, n_train=24, n_val=8)
    # A high LR, strong weight decay and a low clipping threshold so that each of them moves
    # the curve by far more than the bounds below.
    return benchmark_config(model=tiny_model_dir, train=train, val=val, work=tmp_path, steps=5).replace(
        batch_size=2,
        grad_accum_steps=2,
        max_seq_len=128,
        learning_rate=3e-3,
        weight_decay=0.1,
        max_grad_norm=0.5,
    )


def test_it_matches_transformers_peft_step_by_step_and_at_the_final_eval(short_config) -> None:
    ours = run_ours(short_config)
    ref = run_reference(short_config, ours)

    # Same seed, same randomness: PEFT draws the same initial adapter and dropout masks.
    assert ref.extra["same_initial_adapter"]
    assert ref.extra["same_rng_at_step_0"]
    # The data makes the normalisation visible: micro-batches of one step differ in label tokens.
    schedule = BatchSchedule(
        len(ours.train_rows), short_config.batch_size, short_config.grad_accum_steps, short_config.seed
    )
    first_step = [pad_rows([ours.train_rows[i] for i in mb], ours.pad_id) for mb in schedule.micro_batches(0)]
    assert len({int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in first_step}) == len(first_step)

    # Clipping is exercised: some steps' gradient norm is above the threshold.
    assert max(ours.result.extra["grad_norms"]) > short_config.max_grad_norm

    result = compare(ours.result, ref)
    assert len(ours.result.losses) == 5
    assert result["max_step_rel_diff"] <= STEP_REL_BOUND, (ours.result.losses, ref.losses)
    assert result["eval_rel_diff"] <= EVAL_REL_BOUND, (ours.result.eval_loss, ref.eval_loss)
