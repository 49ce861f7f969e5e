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


def register_channel(cls: type[TransferChannel]) -> type[TransferChannel]:
    """Make a TransferChannel subclass available to VM configs under its `name` (usable as a decorator).

    Its `published_output`, if any, names the published FM output whose width fills `input_dim`.
    Registering the same class again is a no-op; another class under a taken name is an error.
    """
    if not (isinstance(cls, type) and issubclass(cls, TransferChannel)) or not cls.name:
        raise ValueError(f"register_channel takes a TransferChannel subclass with a name, got {cls!r}")
    if CHANNELS.get(cls.name, cls) is not cls:
        raise ValueError(f"a transfer channel named {cls.name!r} is already registered: {CHANNELS[cls.name]!r}")
    CHANNELS[cls.name] = cls
    return cls


def build_channels(specs: list[Block], dim: int, tasks: list[str], fm_dims: dict[str, int]) -> list[TransferChannel]:
    """Channels from a VM's typed channel blocks (fxrec.config.ChannelConfig); `fm_dims` gives the published widths."""
    channels = []
    for spec in specs:
        args = spec.kwargs()
        name = spec.name
        output = CHANNELS[name].published_output
        if output is not None:
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
