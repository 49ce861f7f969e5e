"""The NE-budget search: the cheapest quantization of a model whose NE stays within a budget of float32's.

The 2021 low-precision inference paper's recipe, greedy:

1. Quantize everything to the cheapest rung of its ladder (tables int4, Linears int8) and measure, for
   every part alone (that part quantized, the rest float32), its NE cost.
2. While the whole plan's NE change exceeds the budget, move the part whose cost alone is largest one
   rung up its ladder (int4 -> int8 -> fp32 for tables, int8 -> bf16 -> fp32 for Linears), re-measure
   that part's cost at its new rung, and re-measure the whole plan.

The NE change is relative, `(NE_q - NE_fp32) / NE_fp32`, per task; a plan is within the budget when
every task's |change| is (default 0.02% = 2e-4). All-fp32 is always within it, so the search ends. The
events it measures on are the caller's (`evaluate`): choose them from data the model was trained on
or a validation day, and report the chosen plan on later events.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import nn

from fxrec.lowp.quantize import QuantPlan, model_bytes, quantize

DEFAULT_BUDGET = 2e-4  # 0.02% relative NE change
TABLE_LADDER = ("int4", "int8", "fp32")
LINEAR_LADDER = ("int8_rowwise", "bf16", "fp32")

Part = tuple[str, str]
Evaluate = Callable[[nn.Module], Mapping[str, float]]  # model -> {task: NE} on the search's events


def relative_changes(ne: Mapping[str, float], reference: Mapping[str, float]) -> dict[str, float]:
    return {task: (ne[task] - reference[task]) / reference[task] for task in reference}


def _worst(changes: Mapping[str, float]) -> float:
    return max(abs(c) for c in changes.values())


@dataclass
class Step:
    """One move of the search: the part raised, its new format, the whole plan's NE change after it."""

    part: Part
    format: str
    change: float  # the worst task's relative NE change of the whole plan after the move
    bytes: int


@dataclass
class BudgetResult:
    plan: QuantPlan
    budget: float
    reference_ne: dict[str, float]  # float32's NE per task
    ne: dict[str, float]  # the chosen plan's NE per task
    bytes_fp32: int
    bytes: int
    costs: dict[str, float]  # "kind:name" -> the part's relative NE change alone at its cheapest rung
    steps: list[Step] = field(default_factory=list)
    evaluations: int = 0

    @property
    def changes(self) -> dict[str, float]:
        return relative_changes(self.ne, self.reference_ne)

    @property
    def within_budget(self) -> bool:
        return _worst(self.changes) <= self.budget

    def to_dict(self) -> dict:
        return {
            "plan": self.plan.to_dict(),
            "budget": self.budget,
            "reference_ne": self.reference_ne,
            "ne": self.ne,
            "relative_ne_change": self.changes,
            "within_budget": bool(self.within_budget),
            "bytes_fp32": self.bytes_fp32,
            "bytes": self.bytes,
            "costs_alone": self.costs,
            "steps": [
                {"part": f"{s.part[0]}:{s.part[1]}", "format": s.format, "change": s.change, "bytes": s.bytes}
                for s in self.steps
            ],
            "evaluations": self.evaluations,
        }


def _ladder(part: Part) -> tuple[str, ...]:
    return TABLE_LADDER if part[0] == "table" else LINEAR_LADDER


def search(
    model: nn.Module,
    evaluate: Evaluate,
    budget: float = DEFAULT_BUDGET,
    progress: Callable[[str], None] | None = None,
) -> BudgetResult:
    """The greedy search above on `model` (float32, eval mode); `evaluate` scores a model's NE per task."""
    if budget < 0:
        raise ValueError(f"the NE budget is a relative change >= 0 (0.0002 = 0.02%), got {budget}")
    evaluations = 0

    def measure(plan: QuantPlan) -> tuple[dict[str, float], nn.Module]:
        nonlocal evaluations
        evaluations += 1
        quantized = quantize(model, plan)
        return dict(evaluate(quantized)), quantized

    fp32 = QuantPlan.for_model(model)
    reference, reference_model = measure(fp32)
    bytes_fp32 = model_bytes(reference_model)
    level = {part: 0 for part in fp32.parts()}

    def plan_at(levels: Mapping[Part, int]) -> QuantPlan:
        plan = fp32
        for part, rung in levels.items():
            plan = plan.with_format(part, _ladder(part)[rung])
        return plan

    def cost_alone(part: Part, rung: int) -> float:
        if _ladder(part)[rung] == "fp32":
            return 0.0
        ne, _ = measure(fp32.with_format(part, _ladder(part)[rung]))
        return _worst(relative_changes(ne, reference))

    costs: dict[Part, float] = {}
    for part in level:
        costs[part] = cost_alone(part, 0)
        if progress is not None:
            progress(f"{part[0]} {part[1]}: {_ladder(part)[0]} alone changes NE by {costs[part]:+.3%}")
    first_costs = {f"{kind}:{name}": cost for (kind, name), cost in costs.items()}
    plan = plan_at(level)
    ne, quantized = measure(plan)
    steps: list[Step] = []
    while _worst(relative_changes(ne, reference)) > budget:
        raisable = [p for p in level if level[p] < len(_ladder(p)) - 1]
        part = max(raisable, key=lambda p: costs[p])
        level[part] += 1
        costs[part] = cost_alone(part, level[part])
        plan = plan_at(level)
        ne, quantized = measure(plan)
        change = _worst(relative_changes(ne, reference))
        steps.append(Step(part, _ladder(part)[level[part]], change, model_bytes(quantized)))
        if progress is not None:
            progress(f"{part[0]} {part[1]} -> {_ladder(part)[level[part]]}: plan changes NE by {change:+.4%}")
    return BudgetResult(
        plan=plan,
        budget=budget,
        reference_ne=reference,
        ne=ne,
        bytes_fp32=bytes_fp32,
        bytes=model_bytes(quantized),
        costs=first_costs,
        steps=steps,
        evaluations=evaluations,
    )
