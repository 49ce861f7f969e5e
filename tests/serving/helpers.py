"""Requests replayed from the tiny run's log, for the serving tests."""

from __future__ import annotations

import polars as pl

from fxrec.serving.catalog import FeatureCatalog


def last_day_events(log, surface: str = "feed") -> pl.DataFrame:
    return pl.from_arrow(log.read_day(log.days[-1])).filter(pl.col("surface") == surface)


def request_for(
    catalog: FeatureCatalog, event: dict, items: list[int] | None = None, surface: str = "feed"
) -> dict:
    """A score request with `event`'s user and context and the given candidates (default: its item)."""
    context = {f: event[f] for f in catalog.surface_context[surface]}
    return {
        "user_id": int(event["user_id"]),
        "surface": surface,
        "context": context,
        "candidates": [{"item_id": int(i)} for i in (items or [event["item_id"]])],
    }


def make_service(run, vm: str, tmp_path, catalog: FeatureCatalog | None = None, **config):
    """A Service on `run` whose stores are private copies (tests must not touch the run's store)."""
    import shutil

    from fxrec.run import Run
    from fxrec.serving.service import Service, ServingConfig

    published = Run(run).user_store("fm")
    store_dir = tmp_path / "store"
    if published.exists() and not store_dir.exists():
        shutil.copytree(published, store_dir)
    config.setdefault("store", f"lmdb://{store_dir}")
    config.setdefault("cache", f"lmdb://{tmp_path / 'solaris'}")
    config.setdefault("refresh_in", "thread")  # starts in milliseconds; test_soap covers the process default
    return Service(run, vm, ServingConfig(**config), catalog=catalog)
