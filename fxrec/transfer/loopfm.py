"""LoopFM: the FM's historical representations of a user's past events, as a sequence feature of the VM.

FM side (run by `fxrec publish`): hooks on chosen FM layers (no gradient) give e (B, D) per event; a
Matryoshka autoencoder with a tanh code compresses it, z = tanh(enc(e)) in [-1, 1]^c, trained so every
prefix z[:c'] for c' in `prefixes` reconstructs e; codes are stored as int4, round(8 z) clamped to
[-8, 7] (dequantized: code / 8).

VM side, `LoopFMChannel`: for each event, the user's codes from earlier events only -- never the current
or a later one -- within a retention window and capped at the last L, oldest first. An encoder (mean,
sum, or target attention from the VM's own tokens) turns them into one token. LoopFM and KD combine
as the channel set [loopfm, kd]: loss = task + lambda * KD.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fxrec.data.batches import Batch, EventFrame
from fxrec.data.inputs import JaggedInput
from fxrec.nn.mlp import MLP
from fxrec.ops import jagged_dense_attention
from fxrec.transfer.base import TransferChannel, or_missing
from fxrec.transfer.serving import Needs, Served, ServingRequest, Source

ENCODERS = ("mean", "sum", "attention")


def quantize_int4(z: torch.Tensor) -> torch.Tensor:
    """z in [-1, 1] -> int8 codes in [-8, 7] (4 bits of information each)."""
    return torch.round(z * 8).clamp(-8, 7).to(torch.int8)


def dequantize_int4(codes: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(codes).float() / 8


class MatryoshkaAutoencoder(nn.Module):
    """e (B, D) -> code z (B, c) in [-1, 1]; decode(z[:, :c']) reconstructs e for each prefix c'.

    Inputs are standardized with statistics fixed at the first `fit` (kept as buffers), so codes
    stay comparable as the autoencoder keeps training on later days.
    """

    def __init__(self, in_features: int, code_dim: int = 16, hidden: int = 128, prefixes: list[int] | None = None):
        super().__init__()
        self.prefixes = sorted(set(prefixes or [code_dim // 4, code_dim // 2, code_dim]))
        if self.prefixes[-1] != code_dim or self.prefixes[0] < 1:
            raise ValueError(f"Matryoshka prefixes must lie in [1, code_dim={code_dim}] and end at it; got {self.prefixes}")
        self.encoder = nn.Sequential(MLP(in_features, [hidden]), nn.Linear(hidden, code_dim), nn.Tanh())
        self.decoder = nn.Sequential(MLP(code_dim, [hidden]), nn.Linear(hidden, in_features))
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("std", torch.ones(in_features))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.optimizer = torch.optim.Adam(self.parameters(), lr=1e-3)

    def encode(self, e: torch.Tensor) -> torch.Tensor:
        return self.encoder((e - self.mean) / self.std)

    def loss(self, e: torch.Tensor) -> torch.Tensor:
        x = (e - self.mean) / self.std
        z = self.encoder(x)
        total = torch.zeros(())
        for prefix in self.prefixes:
            masked = torch.cat([z[:, :prefix], torch.zeros_like(z[:, prefix:])], dim=1)
            total = total + F.mse_loss(self.decoder(masked), x)
        return total / len(self.prefixes)

    def fit(self, e: torch.Tensor, epochs: int = 2, batch_size: int = 1024, seed: int = 0) -> float:
        """A few epochs of Adam on these representations; returns the last epoch's mean loss."""
        if not bool(self.fitted):
            self.mean.copy_(e.mean(0))
            self.std.copy_(e.std(0).clamp_min(1e-4))
            self.fitted.fill_(True)
        generator = torch.Generator().manual_seed(seed)
        last = float("nan")
        for _ in range(epochs):
            order = torch.randperm(e.shape[0], generator=generator)
            losses = []
            for start in range(0, e.shape[0], batch_size):
                self.optimizer.zero_grad(set_to_none=True)
                loss = self.loss(e[order[start : start + batch_size]])
                loss.backward()
                self.optimizer.step()
                losses.append(float(loss.detach()))
            last = float(np.mean(losses)) if losses else last
        return last


class LoopFMChannel(TransferChannel):
    name = "loopfm"
    published_output = "loopfm"
    num_tokens = 1
    default_max_len = 50

    def __init__(
        self,
        dim: int,
        tasks: list[str],
        input_dim: int,
        encoder: str = "attention",
        max_len: int = default_max_len,
        retention_days: float = 30.0,
        code_dim: int | None = None,
    ):
        super().__init__(dim, tasks)
        if encoder not in ENCODERS:
            raise ValueError(f"LoopFM encoder must be one of {ENCODERS}, got {encoder!r}")
        self.encoder = encoder
        self.max_len = max_len
        self.retention_days = retention_days
        self.code_dim = code_dim or input_dim  # a Matryoshka prefix of the published code
        self.value = nn.Linear(self.code_dim, dim)
        self.query = nn.Linear(dim, dim) if encoder == "attention" else None
        self.missing = nn.Parameter(torch.zeros(dim))

    def attach(self, frame: EventFrame, published) -> None:
        view = published.view(frame)
        offsets, codes, _ = view.loopfm_sequences(self.max_len, self.retention_days)
        frame.inputs[self.input_key] = JaggedInput(offsets, codes[:, : self.code_dim])

    def serving_needs(self) -> Needs:
        return Needs(loopfm_log=self.max_len)

    def serve(self, request: ServingRequest) -> Served:
        """The same cut of the publish log as training (`asof.recent_entries`); the log is not extended
        online, so what it finds is "stale"."""
        log = request.sources.loopfm_log
        assert log is not None, "the server opens the LoopFM log for a channel that needs it"
        sequence = log.sequence(request.user_id, request.ts, self.max_len, self.retention_days, self.code_dim)
        source = Source.stale if len(sequence) else Source.missing
        return Served.shared(JaggedInput.repeat(sequence, request.size), source, request.size)

    def tokens(self, batch: Batch, tokens: torch.Tensor) -> torch.Tensor:
        sequences: JaggedInput = batch.inputs[self.input_key]
        offsets = sequences.offsets
        values = self.value(dequantize_int4(sequences.values))  # (N, d)
        lengths = offsets[1:] - offsets[:-1]
        if self.encoder == "attention":
            assert self.query is not None
            q = self.query(tokens.mean(dim=1)).unsqueeze(1)  # (B, 1, d): the VM's own view of the candidate
            pooled = jagged_dense_attention(q, values, values, offsets, self.max_len, scale=1 / math.sqrt(self.dim))
            pooled = pooled.squeeze(1)
        else:
            pooled = torch.segment_reduce(values, self.encoder, lengths=lengths, unsafe=True, initial=0.0)
        return or_missing(pooled, (lengths > 0).float(), self.missing).unsqueeze(1)
