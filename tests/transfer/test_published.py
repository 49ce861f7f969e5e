"""Joining published FM outputs onto VM events: nothing from the event itself or its future."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from fxrec.data.reader import iter_frames
from fxrec.run import Run
from fxrec.transfer.published import DAY_SECONDS, PublishedFM


def _all_published(run) -> pl.DataFrame:
    files = sorted(Run(run).publish_dir("fm", 0).glob("day=*.parquet"))
    return pl.concat([pl.read_parquet(p) for p in files]).with_row_index("row")


def _vm_frames(small_log, surfaces=("feed",)):
    features = [small_log.spec.feature(n) for n in ("item_id", "position")]
    return iter_frames(small_log, features, surfaces=list(surfaces))


def test_loopfm_sequences_are_the_users_earlier_events_only(published_run, small_log):
    published = PublishedFM(Run(published_run).publish_dir("fm", 0))
    everything = _all_published(published_run)
    by_user = {u: g.sort(["ts", "row"]) for (u,), g in everything.group_by("user_id")}
    checked = 0
    for _, frame in _vm_frames(small_log):
        view = published.view(frame)
        offsets, codes, entry_ts = view.loopfm_sequences(max_len=3, retention_days=1.0)
        offsets = offsets.numpy()
        users, ts = frame.meta["user_id"].numpy(), frame.meta["ts"].numpy()
        for i in range(0, frame.num_rows, 37):
            got_ts = entry_ts[offsets[i] : offsets[i + 1]]
            assert np.all(got_ts < ts[i]), "a LoopFM entry from the event itself or its future"
            assert np.all(ts[i] - got_ts <= DAY_SECONDS), "an entry older than the retention window"
            history = by_user.get(users[i])
            if not view.found[i] or history is None:
                continue
            earlier = history.filter((pl.col("ts") < ts[i]) & (pl.col("ts") >= ts[i] - DAY_SECONDS))
            expected = np.stack(earlier["loopfm"].to_list()[-3:]) if earlier.height else np.zeros((0, 8))
            np.testing.assert_array_equal(codes[offsets[i] : offsets[i + 1]].numpy(), expected)
            checked += 1
    assert checked > 50


def _earlier_events(run, small_log, k: int, step: int):
    """For every `step`-th VM event with a published FM: the user embeddings the join gives (k last
    versions) and the user's published events strictly before it, for a brute-force comparison."""
    published = PublishedFM(Run(run).publish_dir("fm", 0))
    everything = _all_published(run)
    by_user = {u: g.sort(["ts", "row"]) for (u,), g in everything.group_by("user_id")}
    for _, frame in _vm_frames(small_log):
        view = published.view(frame)
        vectors, found, written = view.user_embeddings(k=k)
        ts, users = frame.meta["ts"].numpy(), frame.meta["user_id"].numpy()
        assert np.all(written[found.numpy()] < ts[found.numpy()]), "an embedding written at or after its event"
        for i in range(0, frame.num_rows, step):
            if view.found[i]:
                earlier = by_user[users[i]].filter(pl.col("ts") < ts[i]) if users[i] in by_user else everything.head(0)
                yield bool(found[i]), vectors[i].numpy(), earlier


def test_user_embedding_was_written_before_the_event(published_run, small_log):
    checked = 0
    for found, vector, earlier in _earlier_events(published_run, small_log, k=1, step=41):
        assert found == (earlier.height > 0)
        if found:
            np.testing.assert_allclose(vector, np.array(earlier["user"].to_list()[-1]), atol=1e-6)
            checked += 1
    assert checked > 30


def test_stabilized_embedding_is_the_mean_over_the_last_versions(published_run, small_log):
    checked = 0
    for found, vector, earlier in _earlier_events(published_run, small_log, k=2, step=29):
        if found:
            last_per_version = earlier.group_by("fm_version").agg(pl.col("user").last()).sort("fm_version")
            np.testing.assert_allclose(vector, np.mean(np.array(last_per_version["user"].to_list()[-2:]), axis=0), atol=1e-5)
            checked += 1
    assert checked > 30


def test_the_view_walks_forward_only(published_run, small_log):
    published = PublishedFM(Run(published_run).publish_dir("fm", 0))
    frames = list(_vm_frames(small_log))
    published.view(frames[-1][1])
    with pytest.raises(ValueError, match="forward"):
        published.view(frames[1][1])
