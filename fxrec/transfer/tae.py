"""Target-aware embeddings (Foundation-Expert): the FM's candidate attends to the user's history.

FM side, `TargetAttention`: the candidate's tokens (by default its item id) form one query that attends
over the user's jagged history -- the target-aware mask: the candidate sees every past event, the
history never sees the candidate. Its output (B, d) is both a token of the FM's interaction and the
published TAE for that (user, candidate) event: what the user's whole history says about this item.

VM side, `TAEChannel`: the published TAE (from the FM snapshot trained before the event's day) ->
LayerNorm -> Linear -> one token; a learned "missing" token where there is none. At serving time the
TAE of a pair comes from the SOLARIS precompute cache.
"""

from __future__ import annotations

from fxrec.data.batches import EventFrame
from fxrec.transfer.base import VectorChannel


class TAEChannel(VectorChannel):
    name = "tae"
    feature = "tae"

    def attach(self, frame: EventFrame, published) -> None:
        view = published.view(frame)
        frame.extras["tae"] = view.vectors("tae")
        frame.extras["tae_found"] = view.found.float()
