"""The early-stage ranker (ESR): a two-tower multi-task model between retrieval and the final stage.

- `model`: `EarlyStageRanker` (cacheable user and ad towers, a shared bottom, click / conversion / hide
  heads, `score` = the value formula of its heads) and `SeparateRankers` (the single-task baseline);
- `features`: the towers' plain tensors from impression or candidate rows (`EsrFeatures`);
- `train`: training on the impression log of the days before t only, optionally distilled from the
  final stage's scores on earlier days' candidates (`train_esr`);
- `rank`: the ESR's probabilities and scores over candidate rows, each request's user vector and each
  ad's vector computed once (`esr_scores`).
"""

from fxrec.funnel.esr.features import AD_FEATURES, USER_FEATURES, EsrFeatures
from fxrec.funnel.esr.model import TASKS, EarlyStageRanker, SeparateRankers, TowerInputs, score_of

__all__ = [
    "AD_FEATURES",
    "TASKS",
    "USER_FEATURES",
    "EarlyStageRanker",
    "EsrFeatures",
    "SeparateRankers",
    "TowerInputs",
    "score_of",
]
