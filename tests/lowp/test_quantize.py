"""Quantized serving: tables and Linears in the plan's formats, scores within the measured error of the
float32 twin, admission folded exactly, bytes that shrink, and the NE-budget search's guarantees."""

from __future__ import annotations

import pytest
import torch

from fxrec.config import VMConfig
from fxrec.data.reader import iter_frames
from fxrec.factory import build_model
from fxrec.lowp.budget import LINEAR_LADDER, TABLE_LADDER, search
from fxrec.lowp.dispatch import LowpLinear
from fxrec.lowp.quantize import QuantPlan, model_bytes, quantize, table_names
from fxrec.metrics.ranking import ne


def _vm(**overrides):
    args = dict(
        name="vm",
        role="vm",
        surfaces=["feed"],
        embedding_dim=16,
        dense_layers=[16],
        min_count=2,
        interaction={"name": "dcnv2", "num_layers": 1, "low_rank": 8},
        heads={"hidden": [16]},
    )
    return VMConfig(**{**args, **overrides})


def _trained_like(config, log, seed: int = 0):
    """A model whose admission counts come from a day of the log and whose rows are not tiny."""
    torch.manual_seed(seed)
    model = build_model(config, log.spec)
    features = [log.spec.feature(f) for f in model.features]
    _, frame = next(iter_frames(log, features, days=[log.days[0]], surfaces=config.surfaces))
    model.train()
    with torch.no_grad():
        for batch in frame.batches(512):
            model(batch)  # counts ids: some are admitted, some not
        for weight in model.sparse_arch._weights():
            weight.normal_(0, 0.3)
    return model.eval(), frame


def _logits(model, batch):
    with torch.no_grad():
        return model(batch).logits


@pytest.fixture(scope="module")
def vm(small_log):
    return _trained_like(_vm(), small_log)


def test_fp32_plan_is_the_model_itself(vm):
    model, frame = vm
    batch = next(iter(frame.batches(700)))
    quantized = quantize(model, QuantPlan.for_model(model))
    assert all(
        torch.equal(a, b)
        for a, b in zip(_logits(model, batch).values(), _logits(quantized, batch).values(), strict=True)
    )
    assert model_bytes(quantized) == model_bytes(model)


def test_admission_folded_into_the_tables_scores_every_id_as_before(vm, small_log):
    """One table quantized moves the collection to TorchRec's quantized one; the others stay exact fp32, so
    their tokens must equal the original's for admitted and unadmitted ids alike (a fold that forgot rows
    or copied the wrong row would differ)."""
    model, frame = vm
    assert model.sparse_arch.admission.min_count == 2
    names = table_names(model)
    quantized_table = names[-1]
    plan = QuantPlan({n: ("int8" if n == quantized_table else "fp32") for n in names}, {})
    quantized = quantize(model, plan)
    assert quantized.sparse_arch.admission.min_count == 0  # the counts are gone
    assert not any(name.startswith("count_") for name, _ in quantized.sparse_arch.admission.named_buffers())
    batch = next(iter(frame.batches(700)))
    with torch.no_grad():
        before, _ = model.sparse_arch(batch.sparse, batch.sequences, batch.sequence_ages)
        after, _ = quantized.sparse_arch(batch.sparse, batch.sequences, batch.sequence_ages)
    exact = [
        i
        for i, f in enumerate(model.sparse_arch.token_names)
        if small_log.spec.feature(f).table_name != quantized_table
    ]
    assert exact and torch.allclose(before[:, exact], after[:, exact], atol=1e-6, rtol=0)
    other = [i for i in range(before.shape[1]) if i not in exact]
    assert (before[:, other] - after[:, other]).abs().max() > 0  # the int8 table really is quantized


@pytest.mark.parametrize("table, bound", [("fp16", 2e-3), ("int8", 0.03), ("int4", 0.5)])
def test_quantized_tables_stay_within_their_format_error(vm, table, bound):
    model, frame = vm
    batch = next(iter(frame.batches(700)))
    quantized = quantize(model, QuantPlan.for_model(model, table=table))
    ref = _logits(model, batch)
    error = max(float((_logits(quantized, batch)[t] - ref[t]).abs().max()) for t in ref)
    assert 0 < error < bound
    assert model_bytes(quantized) < model_bytes(model)


def test_jagged_tables_quantize_too(small_log, tiny_fm_config):
    model, frame = _trained_like(tiny_fm_config, small_log)
    assert model.sparse_arch.jagged_sequences
    batch = next(iter(frame.batches(300)))
    quantized = quantize(model, QuantPlan.for_model(model, table="int8"))
    ref = _logits(model, batch)
    assert max(float((_logits(quantized, batch)[t] - ref[t]).abs().max()) for t in ref) < 0.05


def test_quantized_linears_are_frozen_low_precision_layers_within_the_emulated_error(vm):
    model, frame = vm
    batch = next(iter(frame.batches(700)))
    plan = QuantPlan.for_model(model, linear="int8_rowwise")
    quantized = quantize(model, plan)
    lowp = [m for m in quantized.modules() if isinstance(m, LowpLinear)]
    assert len(lowp) == len(plan.linears)
    assert all(m.format == "int8_rowwise" for m in lowp)
    ref = _logits(model, batch)
    error = max(float((_logits(quantized, batch)[t] - ref[t]).abs().max()) for t in ref)
    assert 0 < error < 0.05
    assert not any(isinstance(m, LowpLinear) for m in model.modules())  # the original is untouched


def test_plan_rejects_unknown_formats_and_tables(vm):
    model, _ = vm
    with pytest.raises(ValueError, match="int3"):
        QuantPlan({"item_id": "int3"}, {})
    with pytest.raises(ValueError, match="no_such_table"):
        quantize(model, QuantPlan({"no_such_table": "int8"}, {}))


def _ne_of(frame):
    def evaluate(model):
        logits = _logits(model, next(iter(frame.batches(frame.num_rows))))
        return {t: ne(frame.labels[t].numpy(), torch.sigmoid(logits[t]).double().numpy()) for t in logits}

    return evaluate


def test_search_meets_the_budget_and_a_zero_budget_gives_float32_back(vm):
    model, frame = vm
    evaluate = _ne_of(frame)
    result = search(model, evaluate, budget=2e-4)
    assert result.within_budget
    changes = result.changes
    assert max(abs(c) for c in changes.values()) <= 2e-4
    # the result's NE is what its plan really scores
    again = evaluate(quantize(model, result.plan))
    assert again == pytest.approx(result.ne, rel=1e-9)
    assert result.bytes <= result.bytes_fp32
    strict = search(model, evaluate, budget=0.0)
    assert max(abs(c) for c in strict.changes.values()) == 0.0


def test_search_raises_the_most_sensitive_part_first(vm):
    """A generous budget keeps every part at its cheapest rung; a tight one first raises the part whose
    cheapest rung costs the most NE alone (a search that raised in plan order would not)."""
    model, frame = vm
    evaluate = _ne_of(frame)
    loose = search(model, evaluate, budget=1.0)
    assert not loose.steps
    assert all(f == TABLE_LADDER[0] for f in loose.plan.tables.values())
    assert all(f == LINEAR_LADDER[0] for f in loose.plan.linears.values())
    result = search(model, evaluate, budget=2e-4)
    if result.steps:
        first = result.steps[0].part
        worst = max(result.costs, key=result.costs.get)
        assert f"{first[0]}:{first[1]}" == worst


def test_a_pruned_model_quantizes_with_its_masks_folded(small_log):
    model, frame = _trained_like(
        _vm(prune={"sparsity": 0.5, "schedule": "oneshot", "start_day": 0}), small_log
    )
    from fxrec.lowp.pruning import Pruner

    Pruner.of(model).prune_to(0.5)
    batch = next(iter(frame.batches(500)))
    quantized = quantize(model, QuantPlan.for_model(model, linear="bf16"))
    assert Pruner.of(quantized) is None and Pruner.of(model) is not None  # folded in the copy only
    pruned = [m for m in quantized.modules() if isinstance(m, LowpLinear) and m.frozen]
    assert pruned and sum(int((m.weight_wt == 0).sum()) for m in pruned) > 0  # the zeros survive
    ref = _logits(model, batch)
    assert max(float((_logits(quantized, batch)[t] - ref[t]).abs().max()) for t in ref) < 0.02
