import numpy as np
import polars as pl

from fxrec.data.simulator import SimulatorConfig, simulate


def _small(**overrides):
    base = dict(days=3, impressions_per_day=4000, users=1000, new_users_per_day=100, advertisers=30, ads=200, new_ads_per_day=20)
    return SimulatorConfig(**{**base, **overrides})


def test_same_seed_same_log_and_different_seed_differs():
    a = simulate(_small(), progress=False)
    b = simulate(_small(), progress=False)
    c = simulate(_small(seed=8), progress=False)
    assert a.equals(b)
    assert not a.equals(c)


def test_looks_like_an_ads_system():
    frame = pl.from_arrow(simulate(_small(days=4, impressions_per_day=20000), progress=False))
    by_surface = frame.group_by("surface").agg(ctr=pl.col("click").mean(), share=pl.len() / frame.height)
    ctr = dict(zip(by_surface["surface"], by_surface["ctr"], strict=True))
    assert set(ctr) == {"feed", "stories", "video"}
    assert ctr["video"] > ctr["feed"] > ctr["stories"]  # different base rates per surface
    # Feature availability differs by surface.
    assert frame.filter(pl.col("surface") == "stories")["position"].null_count() == frame.filter(pl.col("surface") == "stories").height
    assert frame.filter(pl.col("surface") != "video")["watch_context"].null_count() == frame.filter(pl.col("surface") != "video").height
    # Conversions only after clicks, with delays; advertisers differ in delay.
    assert frame.filter(pl.col("conversion") > 0)["click"].min() == 1.0
    delays = frame.filter(pl.col("conversion") > 0).group_by("advertiser_id").agg(pl.col("conversion_delay_s").median())
    assert delays["conversion_delay_s"].max() > 5 * delays["conversion_delay_s"].min()
    # Cold start: users and ads appear after day 0.
    first_day = frame.with_columns(day=(pl.col("ts") - pl.col("ts").min()) // 86400)
    assert first_day.filter(pl.col("day") > 0)["item_id"].max() > first_day.filter(pl.col("day") == 0)["item_id"].max()
    assert first_day.filter(pl.col("day") > 0)["user_id"].max() > first_day.filter(pl.col("day") == 0)["user_id"].max()
    # The ground truth is learnable: the oracle ranks clicks well above chance.
    from fxrec.metrics import auc

    assert auc(frame["click"].to_numpy(), frame["oracle_logit"].to_numpy()) > 0.7


def test_minority_cohort_behaves_differently():
    frame = pl.from_arrow(simulate(_small(days=2, impressions_per_day=30000), progress=False))
    hours = frame["hour"].to_numpy()
    night = ((hours < 5) | (hours > 23)).mean()
    # A small night-active minority exists: some, but far from most, traffic is at night.
    assert 0.01 < night < 0.3
    assert np.isfinite(frame["oracle_logit"].to_numpy()).all()
