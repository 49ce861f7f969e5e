"""What a served model needs from the transfer channels it was trained with.

Models are loaded by `fxrec.run.Run.load_model`. A model's version is the last day it was trained
through (its newest snapshot); the FM's version as an int yyyymmdd is what the embedding store tags
its writes with, so a reader can tell an embedding of the serving FM ("fresh") from one of an older
FM ("stale").
"""

from __future__ import annotations

from fxrec.config import ModelConfig
from fxrec.run import LoadedModel, RunError

# Channels whose VM inputs exist at serving time, and the FM-derived extras each needs.
SERVED_CHANNELS = {"sum": "sum_user", "tae": "tae", "loopfm": "loopfm"}
# Channels that only shape training (their loss terms); the served VM needs nothing for them.
TRAINING_ONLY_CHANNELS = {"kd", "exfm"}


def channel_names(config: ModelConfig) -> list[str]:
    return [spec["name"] for spec in config.channel_specs()]


def check_servable(config: ModelConfig) -> None:
    unsupported = [
        c for c in channel_names(config) if c not in SERVED_CHANNELS and c not in TRAINING_ONLY_CHANNELS
    ]
    if unsupported:
        raise RunError(
            f"model {config.name!r} uses channel(s) {unsupported}, which the server cannot feed yet; "
            f"servable channels: {sorted(SERVED_CHANNELS) + sorted(TRAINING_ONLY_CHANNELS)}"
        )


def stabilize_k(config: ModelConfig) -> int:
    """The SUM channel's last-k averaging, so serving reads what training read."""
    for spec in config.channel_specs():
        if spec["name"] == "sum":
            return int(spec.get("stabilize_k", 1))
    return 1


def channel_module(model: LoadedModel, name: str):
    """The VM's TransferChannel module called `name`, or None."""
    for channel in getattr(model.model, "channels", []):
        if getattr(channel, "name", None) == name:
            return channel
    return None
