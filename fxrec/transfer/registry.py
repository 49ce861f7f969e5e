"""Transfer channels by name, as VM configs list them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fxrec.transfer.base import TransferChannel
from fxrec.transfer.exfm import ExFM
from fxrec.transfer.kd import KnowledgeDistillation
from fxrec.transfer.loopfm import LoopFMChannel
from fxrec.transfer.sum import SUMChannel
from fxrec.transfer.tae import TAEChannel

if TYPE_CHECKING:
    from fxrec.config_types import Block

CHANNELS: dict[str, type[TransferChannel]] = {
    "kd": KnowledgeDistillation,
    "exfm": ExFM,
    "sum": SUMChannel,
    "loopfm": LoopFMChannel,
    "tae": TAEChannel,
}
# Channels whose input width is that of a published FM output: {channel: published output}.
INPUT_DIMS = {"sum": "user", "loopfm": "loopfm", "tae": "tae"}


def build_channels(specs: list[Block], dim: int, tasks: list[str], fm_dims: dict[str, int]) -> list[TransferChannel]:
    """Channels from a VM's typed channel blocks (fxrec.config.ChannelConfig); `fm_dims` gives the published widths."""
    channels = []
    for spec in specs:
        args = spec.kwargs()
        name = spec.name
        if name in INPUT_DIMS:
            output = INPUT_DIMS[name]
            if output not in fm_dims:
                raise ValueError(
                    f"channel {name!r} needs the FM's published {output!r} output; publish an FM that has it "
                    f"(`fxrec publish`) -- the published outputs are {sorted(fm_dims) or 'none'}"
                )
            args["input_dim"] = fm_dims[output]
        channels.append(CHANNELS[name](dim, tasks, **args))
    names = [c.name for c in channels]
    if len(set(names)) != len(names):
        raise ValueError(f"a channel is listed twice: {names}")
    return channels
