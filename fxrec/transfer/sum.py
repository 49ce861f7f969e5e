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

from fxrec.data.batches import EventFrame
from fxrec.transfer.base import VectorChannel


class SUMChannel(VectorChannel):
    name = "sum"
    feature = "sum_user"

    def __init__(self, dim: int, tasks: list[str], input_dim: int, stabilize_k: int = 1):
        super().__init__(dim, tasks, input_dim)
        self.stabilize_k = stabilize_k

    def attach(self, frame: EventFrame, published) -> None:
        vectors, found, _ = published.view(frame).user_embeddings(self.stabilize_k)
        frame.extras["sum_user"] = vectors
        frame.extras["sum_user_found"] = found.float()
