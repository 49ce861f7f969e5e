"""Low-precision GEMMs for fxrec models, starting with LoKA's probe.

`Probe` hooks every nn.Linear of a model and keeps running statistics of its inputs (`stats`); its
`report()` scores each candidate format (`formats`: bf16, fp16, dynamic int8, fp8 e4m3/e5m2 tensorwise and
rowwise) per layer by its error on the learned input distribution (`error`) and its kernel time on this
machine (`timing`), as a `ProbeReport` (`report`): safe/unsafe, fast/slow, per layer.

`Mods` (`mods`) are LoKA's model changes, which a model config's `mods:` block switches on: no bias
but the logits, BlockNorm on wide Linears, hard-swish for SiLU/GELU.

Dispatch (`dispatch`) runs each Linear in its own format: `LowpLinear` (forward and backward routed
separately), plans from a probe (`plan_from_probe`) or one format for all (`uniform_plan`), put in place
by `apply_plan`; a model config's `dispatch:` block (`Dispatch`) trains with one.
`Pruner` (`pruning`) prunes a model's dense Linears by magnitude while it trains over the stream, one-shot
or dense-to-sparse (D2S): a model config's `prune:` block.
"""

from fxrec.lowp.dispatch import Dispatch, LowpLinear, apply_plan, current_plan, plan_from_probe, uniform_plan
from fxrec.lowp.error import relative_error
from fxrec.lowp.formats import FORMATS, Format
from fxrec.lowp.mods import Mods
from fxrec.lowp.probe import Probe
from fxrec.lowp.pruning import Pruner
from fxrec.lowp.report import FormatResult, LayerReport, ProbeReport
from fxrec.lowp.stats import RunningMoments, WeightStats, weight_stats

__all__ = [
    "FORMATS",
    "Dispatch",
    "Format",
    "FormatResult",
    "LayerReport",
    "LowpLinear",
    "Mods",
    "Probe",
    "ProbeReport",
    "Pruner",
    "RunningMoments",
    "WeightStats",
    "apply_plan",
    "current_plan",
    "plan_from_probe",
    "relative_error",
    "uniform_plan",
    "weight_stats",
]
