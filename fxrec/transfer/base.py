"""The contract every transfer channel keeps: what a VM takes from the FM, and how.

A channel has four sides, each optional:

- data:    `attach(frame, published)` joins what the FM published for the frame's events (logits,
           user embeddings, LoopFM sequences, TAEs) onto the frame as a typed input
           (`frame.inputs[channel.input_key]`, fxrec/data/inputs.py), as of each event's ts;
- inputs:  `tokens(batch, tokens) -> (B, k, d)` adds k tokens to the VM's interaction input;
- loss:    `loss(output, batch) -> scalar` adds a term to the VM's training loss;
- serving: `serving_needs()` and `serve(request)` give the same input for a request's candidates
           (fxrec/transfer/serving.py); a channel without tokens (KD, ExFM) serves nothing.

A new channel is a subclass registered with `fxrec.transfer.registry.register_channel`; training,
publishing and serving then handle it with no edit elsewhere.

Channels are nn.Modules owned by the VM's RankingModel, so their parameters train and checkpoint
with it. A channel whose parameters follow their own update rule (ExFM's student adapter) returns
them from `own_parameters()` and steps them in `before_step(batch)`, ahead of the VM update.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from fxrec.data.batches import Batch, EventFrame
from fxrec.data.inputs import LogitInput, VectorInput
from fxrec.transfer.serving import Needs, Served, ServingRequest

if TYPE_CHECKING:
    from fxrec.models.output import ModelOutput
    from fxrec.transfer.published import PublishedFM


class TransferChannel(nn.Module):
    """Base class. Subclasses set `name`, `num_tokens` and override what they use."""

    name: str = ""
    num_tokens: int = 0
    # Where the channel's input lives in `frame.inputs` / `batch.inputs` (default: its name); channels
    # that read the same published output under the same key share one join (KD and ExFM's logits).
    input_key: str = ""
    # The feature the server reports the input's per-candidate sources under (default: input_key).
    source_label: str = ""
    # The published FM output whose width is the channel's `input_dim` ("user", "tae", "loopfm"), if any.
    published_output: str | None = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("input_key"):
            cls.input_key = cls.name
        if not cls.__dict__.get("source_label"):
            cls.source_label = cls.input_key

    def __init__(self, dim: int, tasks: list[str]):
        super().__init__()
        self.dim = dim
        self.tasks = list(tasks)

    def build(self, top_features: int) -> None:
        """Called once the VM's interaction is built: `top_features` is the width of its output."""

    def init_bias(self, base_rates: dict[str, float]) -> None:
        """Start any heads of the channel's own at the tasks' base rates (as the VM's heads)."""

    def attach(self, frame: EventFrame, published: PublishedFM) -> None:
        """Join this channel's FM outputs onto the frame's events (as `frame.inputs[self.input_key]`)."""

    def tokens(self, batch: Batch, tokens: torch.Tensor) -> torch.Tensor:
        """(B, num_tokens, d) extra interaction inputs; `tokens` (B, n, d) are the VM's own."""
        raise NotImplementedError

    def loss(self, output: ModelOutput, batch: Batch) -> torch.Tensor | None:
        return None

    def serving_needs(self) -> Needs:
        """The serving sources `serve` reads (fxrec/transfer/serving.py); none by default."""
        return Needs()

    def serve(self, request: ServingRequest) -> Served | None:
        """This channel's input for the request's candidates, as of request.ts; None: nothing to feed."""
        return None

    @property
    def servable(self) -> bool:
        """A VM can serve with this channel: it feeds no input, or it says how to build it at serving."""
        return self.num_tokens == 0 or type(self).serve is not TransferChannel.serve

    def own_parameters(self) -> list[nn.Parameter]:
        return []

    def before_step(self, batch: Batch) -> None:
        """Runs before each VM training step (ExFM's student adapter updates here)."""

    def optimizer_state(self) -> dict:
        return {}

    def load_optimizer_state(self, state: dict) -> None:
        pass


class VectorChannel(TransferChannel):
    """A channel whose input is one published FM vector per event (a VectorInput: values (B, input_dim)
    and found (B,)): LayerNorm -> Linear -> one token, and a learned "missing" token where the FM had
    nothing for the event."""

    num_tokens = 1

    def __init__(self, dim: int, tasks: list[str], input_dim: int):
        super().__init__(dim, tasks)
        self.input_dim = input_dim
        self.norm = nn.LayerNorm(input_dim)
        self.project = nn.Linear(input_dim, dim)
        self.missing = nn.Parameter(torch.zeros(dim))

    def tokens(self, batch: Batch, tokens: torch.Tensor) -> torch.Tensor:
        vector: VectorInput = batch.inputs[self.input_key]
        token = self.project(self.norm(vector.values))
        return or_missing(token, vector.found, self.missing).unsqueeze(1)


def or_missing(token: torch.Tensor, found: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """(B, d): `token` where found (B,) is 1, the learned `missing` (d,) vector where it is 0."""
    found = found.unsqueeze(1)
    return found * token + (1 - found) * missing


def soft_bce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean BCE of logits against soft targets over the rows where mask is 1 (0 if none)."""
    per_row = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (per_row * mask).sum() / mask.sum().clamp_min(1.0)


FM_LOGITS = "fm_logits"  # the input key KD and ExFM share: the FM's logits per task


def fm_targets(batch: Batch, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(FM logits (B,), found mask (B,)) for a task, as joined by `attach_logits`."""
    logits: LogitInput = batch.inputs[FM_LOGITS]
    return logits.logits[task], logits.found


def attach_logits(frame: EventFrame, published: PublishedFM, tasks: list[str]) -> None:
    """FM logits per event (from the snapshot the publish step used for that event's day)."""
    if FM_LOGITS in frame.inputs:
        return
    view = published.view(frame)
    frame.inputs[FM_LOGITS] = LogitInput(
        {task: view.column(f"logit_{task}") for task in tasks}, view.found.float()
    )
