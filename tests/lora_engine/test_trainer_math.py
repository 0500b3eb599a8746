"""The optimizer step's arithmetic: loss, gradient accumulation, clipping, LR schedule, checkpointing.

Each test drives the recipe's own step (`FineTuneRecipe._train_step`) on the tiny model and
compares what reaches the optimizer with an independent computation.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator

import pytest
import torch

from lora_engine.data import IGNORE_INDEX, collate, model_inputs
from lora_engine.progress import ProgressEmitter
from lora_engine.train import FineTuneRecipe

from .conftest import by_type, run_inprocess

# Dropout off: these tests compare exact gradients, not trajectories.
EXACT = {"dropout": 0.0, "max_grad_norm": None, "max_steps": 1}


@pytest.fixture
def make_recipe(make_config) -> Iterator[Callable[..., FineTuneRecipe]]:
    """A set-up recipe (model, data, optimizer, scheduler) in train mode, not yet trained."""
    made: list[FineTuneRecipe] = []

    def make(**overrides) -> FineTuneRecipe:
        recipe = FineTuneRecipe(make_config(**overrides), ProgressEmitter(io.StringIO()))
        recipe.setup()
        recipe.model.train()  # what train() does before its first step
        made.append(recipe)
        return recipe

    yield make
    for recipe in made:
        recipe.cleanup()


def first_step(recipe: FineTuneRecipe) -> tuple[dict[str, torch.Tensor], float]:
    """Run the recipe's first optimizer step; return the gradients the optimizer received
    and the gradient norm the step reported."""
    names = {id(p): n for n, p in recipe.model.named_parameters()}
    seen: dict[str, torch.Tensor] = {}

    def capture(optimizer, _args, _kwargs):
        for group in optimizer.param_groups:
            for p in group["params"]:
                seen[names[id(p)]] = p.grad.detach().clone()

    handle = recipe.optimizer.register_step_pre_hook(capture)
    try:
        _, grad_norm, _ = recipe._train_step(0)
    finally:
        handle.remove()
    return seen, grad_norm


def grads_at_optimizer_step(recipe: FineTuneRecipe) -> dict[str, torch.Tensor]:
    return first_step(recipe)[0]


def global_norm(grads: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())))


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m, k=k: f"{k}: {m}")


def step_examples(recipe: FineTuneRecipe, step: int = 0) -> list[list]:
    return [[recipe.train_examples[i] for i in mb] for mb in recipe.schedule.micro_batches(step)]


# --------------------------------------------------------------------------- loss


def test_it_computes_the_same_loss_as_the_models_own_labels_loss(make_recipe):
    recipe = make_recipe(**EXACT)
    recipe.model.eval()
    (examples,) = step_examples(recipe)
    batch = collate(examples, recipe.pad_id)  # right-padded: padding and prompt tokens are -100
    n_label = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    with torch.no_grad():
        ours = recipe._token_loss_sum(batch) / n_label
        # transformers shifts labels inside the model; passing unshifted labels is its contract.
        theirs = recipe.model(**model_inputs(batch), labels=batch["labels"]).loss

    assert (batch["attention_mask"] == 0).any()  # the batch has padding
    assert n_label < int(batch["attention_mask"].sum()) - len(examples)  # and prompt tokens that are not learned
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- accumulation


def test_it_accumulates_k_micro_batches_into_the_gradient_of_one_batch_of_k_times_b(make_recipe):
    k, b = 2, 4
    accum = make_recipe(batch_size=b, grad_accum_steps=k, **EXACT)
    whole = make_recipe(batch_size=k * b, grad_accum_steps=1, **EXACT)
    micro = step_examples(accum)
    (one,) = step_examples(whole)
    assert [e for mb in micro for e in mb] == one  # the same 8 examples in the same order
    label_counts = [sum(e.num_label_tokens for e in mb) for mb in micro]
    assert len(set(label_counts)) == k, label_counts  # uneven: a mean of means would differ

    # The reference: transformers' own mean token loss over one padded batch of k*b.
    batch = collate(one, whole.pad_id)
    whole.model(**model_inputs(batch), labels=batch["labels"]).loss.backward()
    reference = {n: p.grad.detach().clone() for n, p in whole.model.named_parameters() if p.requires_grad}
    whole.optimizer.zero_grad(set_to_none=True)

    g_accum = grads_at_optimizer_step(accum)
    g_whole = grads_at_optimizer_step(whole)

    assert_close(g_whole, reference, rtol=1e-5, atol=1e-7)
    assert_close(g_accum, reference, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- clipping


def test_it_clips_the_gradient_the_optimizer_applies_when_the_norm_exceeds_the_threshold(make_recipe):
    raw = grads_at_optimizer_step(make_recipe(**EXACT))
    raw_norm = global_norm(raw)
    threshold = raw_norm / 10  # well below the true norm

    applied, logged_norm = first_step(make_recipe(**{**EXACT, "max_grad_norm": threshold}))

    # The logged norm is the norm before clipping; the optimizer sees the rescaled gradient.
    assert logged_norm == pytest.approx(raw_norm, rel=1e-5)
    assert global_norm(applied) == pytest.approx(threshold, rel=1e-5)
    scale = threshold / raw_norm
    assert_close(applied, {n: g * scale for n, g in raw.items()}, rtol=1e-4, atol=1e-9)


def test_it_leaves_a_gradient_below_the_threshold_alone(make_recipe):
    raw = grads_at_optimizer_step(make_recipe(**EXACT))
    applied = grads_at_optimizer_step(make_recipe(**{**EXACT, "max_grad_norm": global_norm(raw) * 10}))

    assert_close(applied, raw, rtol=0, atol=0)


# --------------------------------------------------------------------------- schedule


def expected_lr_factor(scheduler: str, s: int, warmup: int, total: int) -> float:
    """The documented schedule, written out: s is the 0-based index of the step about to run."""
    if s < warmup:
        return (s + 1) / warmup
    progress = (s - warmup) / (total - warmup)
    if scheduler == "constant":
        return 1.0
    if scheduler == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@pytest.mark.parametrize("scheduler", ["cosine", "linear", "constant"])
def test_it_follows_the_lr_schedule_formula_step_by_step(make_recipe, scheduler):
    peak, total = 1e-3, 12
    recipe = make_recipe(learning_rate=peak, lr_scheduler=scheduler, warmup_ratio=0.25, max_steps=total)
    applied = []
    for _ in range(total):
        applied.append(recipe.optimizer.param_groups[0]["lr"])  # what optimizer.step() would use
        recipe.optimizer.step()
        recipe.scheduler.step()

    warmup = 3  # ceil(0.25 * 12)
    expected = [peak * expected_lr_factor(scheduler, s, warmup, total) for s in range(total)]
    assert applied == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # Spot values: warmup ramps to the peak, the peak is held at the first decay step.
    assert applied[0] == pytest.approx(peak / 3) and applied[2] == applied[3] == pytest.approx(peak)
    if scheduler == "cosine":
        assert applied[3 + 9 // 2] < peak * 0.6 and applied[-1] == pytest.approx(
            peak * 0.5 * (1 + math.cos(math.pi * 8 / 9))
        )


def test_it_reports_the_lr_each_step_ran_with(make_config):
    total = 6
    cfg = make_config(learning_rate=1e-3, warmup_ratio=0.34, max_steps=total)  # ceil(0.34 * 6) = 3 warmup steps

    code, lines = run_inprocess(cfg)

    assert code == 0
    lrs = [m["lr"] for m in by_type(lines, "metrics")]
    assert lrs == pytest.approx([1e-3 * expected_lr_factor("cosine", s, 3, total) for s in range(total)], rel=1e-12)


# --------------------------------------------------------------------------- checkpointing


@pytest.mark.parametrize(("checkpointing", "forwards_per_micro_batch"), [(False, 1), (True, 2)])
def test_it_recomputes_each_decoder_layer_in_backward_only_with_gradient_checkpointing(
    make_recipe, checkpointing, forwards_per_micro_batch
):
    recipe = make_recipe(gradient_checkpointing=checkpointing, grad_accum_steps=2, **EXACT)
    calls = []
    # A pre-hook: torch stops the recompute early once the saved tensors it needs are
    # rebuilt, so the layer's post-forward hooks do not run on the recompute.
    handles = [
        layer.register_forward_pre_hook(lambda m, a, i=i: calls.append(i))
        for i, layer in enumerate(recipe.model.model.layers)
    ]
    try:
        recipe._train_step(0)
    finally:
        for h in handles:
            h.remove()

    n_layers = len(recipe.model.model.layers)
    assert len(calls) == 2 * n_layers * forwards_per_micro_batch


def test_it_trains_the_same_with_and_without_gradient_checkpointing(make_recipe):
    plain = grads_at_optimizer_step(make_recipe(**EXACT))
    recomputed = grads_at_optimizer_step(make_recipe(gradient_checkpointing=True, **EXACT))

    assert_close(recomputed, plain, rtol=1e-5, atol=1e-8)
