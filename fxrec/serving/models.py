"""What a served model needs from the transfer channels it was trained with.

Models are loaded by `fxrec.run.Run.load_model`. A model's version is the last day it was trained
through (its newest snapshot); the FM's version as an int yyyymmdd is what the embedding store tags
its writes with, so a reader can tell an embedding of the serving FM ("fresh") from one of an older
FM ("stale").
"""

from __future__ import annotations

from fxrec.config import ModelConfig
from fxrec.run import LoadedModel, RunError


def channel_names(config: ModelConfig) -> list[str]:
    return [spec["name"] for spec in config.channel_specs()]


def check_servable(model: LoadedModel) -> None:
    """Every channel of the VM either feeds it nothing at serving (KD, ExFM) or says how to (`serve`)."""
    channels = list(getattr(model.model, "channels", []))
    unsupported = [c.name for c in channels if not c.servable]
    if unsupported:
        raise RunError(
            f"model {model.name!r} uses channel(s) {unsupported}, which the server cannot feed: they add "
            f"tokens but define no `serve`; servable channels of this model: "
            f"{[c.name for c in channels if c.servable]}"
        )
