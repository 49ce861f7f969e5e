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

import numpy as np
import torch

from fxrec.data.batches import EventFrame
from fxrec.data.inputs import VectorInput
from fxrec.transfer.base import VectorChannel
from fxrec.transfer.serving import Needs, Served, ServingRequest, Source


class TAEChannel(VectorChannel):
    name = "tae"
    published_output = "tae"

    def attach(self, frame: EventFrame, published) -> None:
        view = published.view(frame)
        frame.inputs[self.input_key] = VectorInput(view.vectors("tae"), view.found.float())

    def serving_needs(self) -> Needs:
        return Needs(pair_embeddings=self.input_dim)

    def serve(self, request: ServingRequest) -> Served:
        """The FM's TAE when it runs inline, else SOLARIS: the pair cache, the user's aggregate, or
        similar users (found by the user's stored embedding)."""
        inline = request.inline("tae")
        if inline is not None:
            return Served.shared(VectorInput(inline, torch.ones(request.size)), Source.inline, request.size)
        user = request.user_embedding()
        vectors, found, sources = request.sources.pair_embeddings(request.user_id, request.item_ids, user.vector)
        values = torch.from_numpy(np.array(vectors, dtype=np.float32, copy=True))
        return Served(VectorInput(values, torch.from_numpy(found.astype(np.float32))), sources)
