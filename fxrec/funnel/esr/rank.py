"""The ESR over candidate rows: each request's user vector once, each ad's vector once, then the heads.

This is how an ESR serves: the user tower runs once per request and the ad tower once per ad version
(here: per ad and day, the ad's features being fixed within a day), and each (request, ad) pair costs
only the heads. `esr_scores` returns the heads' probabilities and the ESR's score (the value formula
of its heads) for every row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from fxrec.funnel.esr.features import EsrFeatures, History
from fxrec.funnel.esr.model import EarlyStageRanker, SeparateRankers


def _first_rows(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the first row of each distinct key, each row's index into them)."""
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first, inverse


@torch.no_grad()
def esr_scores(
    model: EarlyStageRanker | SeparateRankers,
    features: EsrFeatures,
    rows: pa.Table,
    history: History | None,
    batch_size: int = 65536,
) -> dict[str, np.ndarray]:
    """{head: (N,) probability, "score": (N,) the value formula of the heads} for candidate (or
    impression) rows; user vectors are computed per `event_id`, ad vectors per `item_id`."""
    model.eval()
    n = rows.num_rows
    user_first, user_of = _first_rows(rows.column("event_id").to_numpy())
    ad_first, ad_of = _first_rows(rows.column("item_id").to_numpy())
    users = features.user_inputs(rows, history)
    ads = features.ad_inputs(rows)
    u = model.user_vectors(users.take(torch.from_numpy(user_first)))
    a = model.ad_vectors(ads.take(torch.from_numpy(ad_first)))
    bid = torch.from_numpy(rows.column("bid").to_numpy().astype(np.float32))
    out: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, batch_size):
        ui = torch.from_numpy(user_of[start : start + batch_size])
        ai = torch.from_numpy(ad_of[start : start + batch_size])
        us, as_ = u.index_select(0, ui), a.index_select(0, ai)
        heads = model.heads(us, as_)
        for task, p in heads.items():
            out.setdefault(task, []).append(p.numpy())
        out.setdefault("score", []).append(model.score(us, as_, bid[start : start + batch_size]).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def impression_probabilities(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What each head predicts about an impression's own labels: click P(click), conversion
    P(click and conversion) = pCTR x pCVR (a conversion label needs its click), hide P(hide)."""
    out = {}
    if "click" in scores:
        out["click"] = scores["click"]
    if "conversion" in scores and "click" in scores:
        out["conversion"] = scores["click"] * scores["conversion"]
    if "hide" in scores:
        out["hide"] = scores["hide"]
    return out


__all__ = ["esr_scores", "impression_probabilities"]
