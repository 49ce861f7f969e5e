"""SUM (Scaling User Modeling): a user tower inside the FM; experts consume its user embedding.

FM side, `UserTower`: user-side tokens only (user id, demographics, segments, pooled history) and the
user's dense features -> one user embedding u (B, d_u). The FM's light mix tower is its usual
interaction over [item/context tokens, proj(u)], so u must carry what the FM's tasks need about the
user. `fxrec publish` writes u per event and into the embedding store, tagged with the FM version.

VM side, `SUMChannel`: the user's embedding as of the event (written by an earlier request, never
the current one), averaged over the last k stored FM versions (stabilization: a new FM version
moves the embedding distribution; the mean of the last k damps the jump) -> LayerNorm -> Linear ->
one token. A user with no stored embedding gets a learned "missing" token instead.
"""

from __future__ import annotations

import torch

from fxrec.data.batches import EventFrame
from fxrec.data.inputs import VectorInput
from fxrec.transfer.base import VectorChannel
from fxrec.transfer.serving import Needs, Served, ServingRequest, Source


class SUMChannel(VectorChannel):
    name = "sum"
    source_label = "sum_user"
    published_output = "user"

    def __init__(self, dim: int, tasks: list[str], input_dim: int, stabilize_k: int = 1):
        super().__init__(dim, tasks, input_dim)
        self.stabilize_k = stabilize_k

    def attach(self, frame: EventFrame, published) -> None:
        vectors, found, _ = published.view(frame).user_embeddings(self.stabilize_k)
        frame.inputs[self.input_key] = VectorInput(vectors, found.float())

    def serving_needs(self) -> Needs:
        return Needs(user_embeddings=self.input_dim, stabilize_k=self.stabilize_k)

    def serve(self, request: ServingRequest) -> Served:
        """The FM's user embedding when it runs inline, else the store's mean of its last k versions."""
        inline = request.inline("user")
        if inline is not None:
            return Served.shared(VectorInput(inline, torch.ones(request.size)), Source.inline, request.size)
        user = request.user_embedding(self.stabilize_k)
        return Served.shared(VectorInput.repeat(user.vector, request.size, self.input_dim), user.source, request.size)
