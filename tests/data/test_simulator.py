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


def test_intent_comes_only_from_earlier_clicks_in_event_order():
    """Short-term intent, recomputed from the log alone: each impression's term is what the user's
    clicks at earlier event ids give, so the simulator never reads a click that had not happened."""
    from fxrec.data.simulator import AdsWorld

    config = _small(days=2, impressions_per_day=3000, intent_strength=2.0, intent_memory=5, intent_halflife=1.5)
    with_intent = simulate(config, progress=False)
    without = simulate(config.model_copy(update={"intent_strength": 0.0}), progress=False)
    # Off, it changes nothing else: the same users, ads and click draws come out.
    for column in ("event_id", "user_id", "item_id", "ts"):
        assert with_intent.column(column).equals(without.column(column))
    term = with_intent.column("oracle_logit").to_numpy() - without.column("oracle_logit").to_numpy()
    world = AdsWorld(config)
    weights = 0.5 ** (np.arange(5) / 1.5)
    weights /= weights.sum()
    users, ads = with_intent.column("user_id").to_numpy(), with_intent.column("item_id").to_numpy()
    clicks = with_intent.column("click").to_numpy()
    earlier: dict[int, list[int]] = {}
    expected = np.empty(len(users))
    for i in np.argsort(with_intent.column("event_id").to_numpy()):
        recent = earlier.get(users[i], [])[:5]
        pull = sum((w * world.ad_topic[a] for w, a in zip(weights, recent, strict=False)), np.zeros(config.topics))
        expected[i] = 2.0 * np.tanh(pull @ world.transition @ world.ad_topic[ads[i]])
        if clicks[i]:
            earlier[users[i]] = [ads[i], *earlier.get(users[i], [])]
    np.testing.assert_allclose(term, expected, atol=1e-4)
    assert np.std(term) > 0.2 and (term != 0).mean() > 0.25  # a real effect, on every user with a click


def test_user_feature_counts_only_earlier_impressions():
    """The dense user feature is an observed count of the user's impressions strictly before the
    event (what a log can know), not the generator's hidden activity rate."""
    frame = pl.from_arrow(simulate(_small(days=3, impressions_per_day=3000), progress=False))
    assert "user_activity" not in frame.columns
    expected = frame.with_columns(
        earlier=pl.col("ts").rank("min").over("user_id").cast(pl.Int64) - 1  # same-ts ties are not earlier
    )["earlier"].to_numpy()
    observed = np.expm1(frame["user_past_impressions"].to_numpy().astype(np.float64))
    np.testing.assert_allclose(observed, expected, rtol=1e-5, atol=1e-3)
    assert (frame.group_by("user_id").agg(pl.col("user_past_impressions").min())["user_past_impressions"] == 0).all()
