"""Event-log importers: MovieLens-100K and Open Bandit from (fake) wheels, and any CSV / Parquet table."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from fxrec.data.batches import hash_rows
from fxrec.data.eventlog import EventLog, EventLogError, write_events
from fxrec.data.reader import iter_frames
from fxrec.data.schema import DatasetSpec, FeatureKind
from fxrec.data.sources import (
    import_movielens_100k,
    import_open_bandit,
    import_table,
    movielens,
    movielens_split_points,
    open_bandit,
    wheels,
)
from fxrec.data.sources.ids import hashed_cardinality, stable_hash
from fxrec.data.sources.movielens import split_points
from fxrec.data.sources.table import TableImportSpec

# ---------------------------------------------------------------------------------------------- fakes


def _fake_wheel(folder: Path, name: str, members: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in members.items():
            archive.writestr(member, text)
    return path


def _movielens_files(rng: np.random.Generator, rows: int = 40) -> dict[str, str]:
    users = ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"]
    users += ["1\t17\tM\tstudent\t94043", "2\t30\tF\twriter\tT8H1N", "3\t60\tM\tnobody\t10001"]
    items = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    items += ['1\tToy "Story"\t1995\tAnimation Children\'s Comedy', "2\tHeat\t1995\tAction Crime Thriller"]
    items += ["3\tOdd\t1996\tunknown"]
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    ts = rng.integers(880_000_000, 880_000_000 + 5 * 86_400, rows)
    ts[:6] = 880_100_000  # ties, broken by (user_id, item_id)
    pairs = [(u, i) for u in (1, 2, 3) for i in (1, 2, 3)]
    for k in range(rows):
        user, item = pairs[k % len(pairs)]
        inter.append(f"{user}\t{item}\t{rng.integers(1, 6)}\t{ts[k]}")
    prefix = "recbole/dataset_example/ml-100k/ml-100k"
    return {
        f"{prefix}.inter": "\n".join(inter),
        f"{prefix}.user": "\n".join(users),
        f"{prefix}.item": "\n".join(items),
    }


def _obd_files(
    rng: np.random.Generator,
    rows: int = 30,
    items: int = 4,
    timestamp: str | None = None,
    policy: str = "random",
    campaign: str = "all",
) -> dict[str, str]:
    header = ",timestamp,item_id,position,click,propensity_score," + ",".join(
        f"user_feature_{i}" for i in range(4)
    )
    header += "," + ",".join(f"user-item_affinity_{j}" for j in range(items))
    lines = [header]
    seconds = np.sort(rng.integers(0, 3 * 86_400, rows))
    for k in range(rows):
        stamp = np.datetime64(1_574_553_600 + int(seconds[k]), "s").astype(str).replace("T", " ")
        stamp = timestamp if (timestamp and k == 5) else f"{stamp}.{rng.integers(0, 999_999):06d}+00:00"
        group = int(rng.integers(0, 3))
        features = [f"a{group}", "b0", f"c{group}", f"d{group % 2}"]
        item = int(rng.integers(0, items))
        affinity = [f"{0.5 * (j == item) + 0.1 * group:.1f}" for j in range(items)]
        lines.append(
            f"{k},{stamp},{item},{k % 3 + 1},{int(k % 7 == 0)},0.25," + ",".join(features + affinity)
        )
    context = [",item_id,item_feature_0,item_feature_1,item_feature_2,item_feature_3"]
    # Like the real files, each sample's context hashes the categorical item features its own way.
    context += [f"{j},{j},{0.1 * j},{policy}x{j % 2},y{j},z0" for j in range(items)]
    root = f"obp/dataset/obd/{policy}/{campaign}"
    return {f"{root}/{campaign}.csv": "\n".join(lines), f"{root}/item_context.csv": "\n".join(context)}


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.fixture
def recbole_cache(tmp_path: Path, rng: np.random.Generator) -> Path:
    cache = tmp_path / "cache"
    _fake_wheel(cache, "recbole-1.2.1-py3-none-any.whl", _movielens_files(rng))
    return cache


@pytest.fixture
def obp_cache(tmp_path: Path, rng: np.random.Generator) -> Path:
    cache = tmp_path / "cache"
    _fake_wheel(cache, "obp-0.4.1-py3-none-any.whl", _obd_files(rng))
    return cache


@pytest.fixture(autouse=True)
def no_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fast tests never reach the network: a pip call fails as if PyPI were down."""

    def fail(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(args, 1, "", "no network in tests")

    monkeypatch.setattr(wheels.subprocess, "run", fail)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- wheels


def test_fetch_wheel_uses_the_cache_without_pip(recbole_cache: Path) -> None:
    found = wheels.fetch_wheel("recbole", "1.2.1", recbole_cache)
    assert found == recbole_cache / "recbole-1.2.1-py3-none-any.whl"


def test_fetch_wheel_reports_a_failed_download(tmp_path: Path) -> None:
    with pytest.raises(wheels.WheelFetchError, match=r"recbole==1\.2\.1.*no network"):
        wheels.fetch_wheel("recbole", "1.2.1", tmp_path)
    assert list(tmp_path.iterdir()) == []  # the temp download folder is gone


def test_default_cache_follows_fxrec_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FXREC_CACHE", str(tmp_path))
    assert wheels.default_cache_dir() == tmp_path / "wheels"


def test_stable_hash_and_collision_free_cardinality() -> None:
    values = pa.array(["a", "b", "a", None, "c"])
    ids = stable_hash(values)
    assert ids.dtype == np.int64 and (ids >= 0).all()
    assert ids[0] == ids[2] and len(set(ids.tolist())) == 4
    np.testing.assert_array_equal(ids, stable_hash(values))  # deterministic
    many = stable_hash(pa.array([f"v{i}" for i in range(40)]))
    cardinality = hashed_cardinality(many)
    assert len(np.unique(hash_rows(many, cardinality))) == 40


# ---------------------------------------------------------------------------------------------- movielens


def test_movielens_log_schema_spec_and_order(tmp_path: Path, recbole_cache: Path) -> None:
    log = EventLog(import_movielens_100k(tmp_path / "ml", cache_dir=recbole_cache))
    table = log.read_all()
    assert table.num_rows == 40
    assert table.schema.field("genres").type == pa.list_(pa.int64())
    for column in (
        "event_id",
        "ts",
        "user_id",
        "item_id",
        "age_bucket",
        "gender",
        "occupation",
        "zip_prefix",
    ):
        assert table.schema.field(column).type == pa.int64(), column
    assert table.schema.field("click").type == pa.float32()
    spec = log.spec
    assert spec.surfaces == ["movielens"] and spec.tasks == ["click"] and spec.history_length == 20
    history = spec.feature("hist_item_id")
    assert (history.kind, history.source, history.table) == (FeatureKind.sequence, "item_id", "item_id")
    assert spec.feature("genres").kind is FeatureKind.multi
    assert spec.feature("user_id").cardinality >= 3 + 1 and spec.feature("item_id").cardinality >= 3 + 1

    # A click is a rating of 4 or 5.
    np.testing.assert_array_equal(
        table["click"].to_numpy(), (table["label_rating"].to_numpy() >= 4).astype(np.float32)
    )
    # event_id numbers the total (ts, user_id, item_id) order, and the log is stored in that order.
    frame = pl.from_arrow(table)
    ordered = frame.sort(["ts", "user_id", "item_id"])
    assert ordered["event_id"].to_list() == list(range(40))
    assert frame["event_id"].to_list() == list(range(40))
    # Features: MovieLens-1M age buckets, non-US zip codes in one bucket, genres in u.genre order.
    users = frame.unique("user_id").sort("user_id")
    assert users["age_bucket"].to_list() == [1, 3, 7]
    assert users["zip_prefix"].to_list() == [94, movielens.NON_US_ZIP, 10]
    assert users["occupation"].to_list() == [movielens.OCCUPATIONS.index("student") + 1, 21, 0]
    genres = dict(frame.unique("item_id").select("item_id", "genres").iter_rows())
    assert genres[1] == [3, 4, 5] and genres[3] == [0]


def test_movielens_log_reads_into_batches_with_histories(tmp_path: Path, recbole_cache: Path) -> None:
    log = EventLog(import_movielens_100k(tmp_path / "ml", cache_dir=recbole_cache))
    rows = 0
    for _, frame in iter_frames(log, log.spec.features):
        batch = next(frame.batches(64))
        assert batch.sequences is not None and batch.sequences.keys() == ["hist_item_id"]
        rows += frame.num_rows
    assert rows == 40


def test_movielens_split_points(tmp_path: Path, recbole_cache: Path) -> None:
    log = EventLog(import_movielens_100k(tmp_path / "ml", cache_dir=recbole_cache))
    train_end, valid_end = movielens_split_points(log)
    assert (train_end, valid_end) == (32, 36)
    ids = log.read_all(["event_id"])["event_id"].to_numpy()
    sizes = [
        (ids < train_end).sum(),
        ((ids >= train_end) & (ids < valid_end)).sum(),
        (ids >= valid_end).sum(),
    ]
    assert sizes == [32, 4, 4]
    assert split_points(np.arange(10), (1.0, 0.0, 0.0)) == (10, 10)
    with pytest.raises(ValueError, match="summing to 1"):
        split_points(np.arange(10), (0.5, 0.1, 0.1))


def test_movielens_wheel_without_data_names_the_file(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _fake_wheel(cache, "recbole-1.2.1-py3-none-any.whl", {"recbole/__init__.py": ""})
    with pytest.raises(EventLogError, match=r"recbole-1\.2\.1.*ml-100k\.inter"):
        import_movielens_100k(tmp_path / "ml", cache_dir=cache)
    assert not (tmp_path / "ml").exists()


# ---------------------------------------------------------------------------------------------- open bandit


def test_open_bandit_log(tmp_path: Path, obp_cache: Path) -> None:
    log = EventLog(import_open_bandit(tmp_path / "obd", cache_dir=obp_cache))
    table = log.read_all()
    frame = pl.from_arrow(table)
    assert table.num_rows == 30 and log.spec.surfaces == ["zozotown-all"]
    assert table.schema.field("propensity").type == pa.float32()
    assert "propensity" not in [f.name for f in log.spec.features]  # a column for estimators, not an input
    assert table.schema.field("ts").type == pa.int64() and table["ts"].to_numpy().min() >= 1_574_553_600
    assert frame["event_id"].to_list() == list(range(30)) and frame["ts"].is_sorted()
    # The pseudo user is the user-feature tuple: same tuple, same id; different tuple, different id.
    groups = frame.group_by("user_id").agg(
        pl.col("user_feature_0").n_unique(), pl.col("user_feature_2").n_unique()
    )
    assert groups.height == frame.select(pl.struct("user_feature_0", "user_feature_2").n_unique()).item()
    assert (groups["user_feature_0"] == 1).all()
    # user_item_affinity is the affinity column of the shown item (0.5 + 0.1 * group in the fake data).
    assert (frame["user_item_affinity"] >= 0.45).all()
    item_feature_0 = dict(frame.select("item_id", "item_feature_0").unique().iter_rows())
    assert all(abs(v - 0.1 * k) < 1e-6 for k, v in item_feature_0.items())
    for name in ("user_id", "user_feature_0", "item_feature_1", "item_feature_2"):
        feature = log.spec.feature(name)
        assert (
            len(np.unique(hash_rows(frame[name].unique().to_numpy(), feature.cardinality)))
            == frame[name].n_unique()
        )


def test_open_bandit_bad_timestamp(tmp_path: Path, rng: np.random.Generator) -> None:
    cache = tmp_path / "cache"
    _fake_wheel(cache, "obp-0.4.1-py3-none-any.whl", _obd_files(rng, timestamp="yesterday"))
    with pytest.raises(EventLogError, match=r"all\.csv.*'timestamp'.*yesterday.*%Y-%m-%d"):
        import_open_bandit(tmp_path / "obd", cache_dir=cache)
    assert not (tmp_path / "obd").exists()


def test_open_bandit_rejects_unknown_campaign(tmp_path: Path, obp_cache: Path) -> None:
    with pytest.raises(ValueError, match="campaign"):
        import_open_bandit(tmp_path / "obd", cache_dir=obp_cache, campaigns=["all", "kids"])
    with pytest.raises(ValueError, match="policy"):
        import_open_bandit(tmp_path / "obd", cache_dir=obp_cache, policies=[])


def test_open_bandit_merges_samples_in_time_order(tmp_path: Path, rng: np.random.Generator) -> None:
    cache = tmp_path / "cache"
    files, sizes = {}, {"all": 4, "men": 3}
    for policy in ("random", "bts"):
        for campaign, items in sizes.items():
            files |= _obd_files(rng, rows=20, items=items, policy=policy, campaign=campaign)
    _fake_wheel(cache, "obp-0.4.1-py3-none-any.whl", files)
    log = EventLog(
        import_open_bandit(
            tmp_path / "obd", cache_dir=cache, campaigns=["all", "men"], policies=["random", "bts"]
        )
    )
    frame = pl.from_arrow(log.read_all())
    assert frame.height == 80 and frame["event_id"].to_list() == list(range(80)) and frame["ts"].is_sorted()
    assert log.spec.surfaces == ["zozotown-all", "zozotown-men"]
    assert frame.group_by("surface", "policy").len().height == 4
    # The men campaign's items come after the all campaign's: same raw ids, different items.
    items = frame.group_by("surface").agg(
        pl.col("item_id").min().alias("lo"), pl.col("item_id").max().alias("hi")
    )
    bounds = {s: (lo, hi) for s, lo, hi in items.iter_rows()}
    assert bounds["zozotown-all"][1] < sizes["all"] <= bounds["zozotown-men"][0]
    # Both policies' rows of an item carry the same item features (one context file per campaign).
    per_item = frame.group_by("item_id").agg(pl.col("item_feature_1").n_unique(), pl.col("policy").n_unique())
    assert (per_item["item_feature_1"] == 1).all() and (per_item["policy"] == 2).any()


# ---------------------------------------------------------------------------------------------- table


def _table_spec(tmp_path: Path, **options: object) -> Path:
    spec = {
        "name": "shop",
        "surfaces": ["web", "app"],
        "features": [
            {"name": "user_id", "kind": "sparse", "cardinality": 100},
            {"name": "item_id", "kind": "sparse", "cardinality": 100},
            {"name": "tags", "kind": "multi", "cardinality": 50},
            {"name": "price", "kind": "dense"},
            {"name": "hist_item_id", "kind": "sequence", "source": "item_id", "table": "item_id"},
        ],
        "columns": {"ts": "time", "user_id": "uid", "click": "rating"},
        "surface": "web",
        "timestamp_format": "%Y-%m-%d %H:%M:%S",
        "click_threshold": 4,
        **options,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _shop_rows(n: int = 12, start: int = 0) -> dict[str, list[object]]:
    return {
        "time": [f"2024-03-0{1 + i % 3} 10:00:{i:02d}" for i in range(n)],
        "uid": [i % 4 for i in range(n)],
        "item_id": [i % 5 for i in range(n)],
        "rating": [i % 6 for i in range(n)],
        "tags": ["1|2" if i % 2 else "3" for i in range(n)],
        "price": [1.5 * i for i in range(n)],
        "note": ["ignored"] * n,
    }


def _write_csv(path: Path, rows: dict[str, list[object]]) -> Path:
    pl.DataFrame(rows).write_csv(path)
    return path


def test_import_table_csv_and_parquet(tmp_path: Path) -> None:
    spec_path = _table_spec(tmp_path)
    csv = _write_csv(tmp_path / "a.csv", _shop_rows())
    rows = _shop_rows()
    rows["tags"] = [[int(t) for t in s.split("|")] for s in rows["tags"]]  # type: ignore[union-attr]
    parquet = tmp_path / "b.parquet"
    pq.write_table(pa.table(rows), parquet)
    log = EventLog(import_table(spec_path, [csv, parquet], tmp_path / "out"))
    frame = pl.from_arrow(log.read_all())
    assert frame.height == 24 and log.days == ["2024-03-01", "2024-03-02", "2024-03-03"]
    assert set(frame["surface"]) == {"web"} and "note" not in frame.columns
    ordered = frame.sort(["ts", "user_id", "item_id", "event_id"])
    assert ordered["event_id"].to_list() == list(range(24))
    by_rating = frame.join(
        pl.DataFrame(_shop_rows()).select("uid", "item_id", "rating").unique(),
        left_on=["user_id", "item_id"],
        right_on=["uid", "item_id"],
    )
    assert (by_rating["click"] == (by_rating["rating"] >= 4).cast(pl.Float32)).all()
    assert set(
        map(tuple, frame.filter((pl.col("user_id") == 1) & (pl.col("item_id") == 1))["tags"].to_list())
    ) == {(1, 2)}
    assert DatasetSpec.load(tmp_path / "out" / "spec.yaml").name == "shop"


def _error_cases(tmp_path: Path) -> dict[str, tuple[list[Path], str]]:
    """name -> (files, regex the error must match: file, column, expectation)."""
    missing = _shop_rows()
    del missing["uid"]
    strings = _shop_rows()
    strings["item_id"] = ["1", "2", "three"] + [str(i) for i in strings["item_id"][3:]]
    bad_time = _shop_rows()
    bad_time["time"][4] = "next tuesday"
    duplicated = {"event_id": list(range(12)), **_shop_rows()}
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text(",".join(_shop_rows()) + "\n")
    ok = _write_csv(tmp_path / "ok.csv", duplicated)
    return {
        "missing column": (
            [_write_csv(tmp_path / "missing.csv", missing)],
            r"missing\.csv.*'uid'.*'user_id'.*int64",
        ),
        "mistyped column": (
            [_write_csv(tmp_path / "strings.csv", strings)],
            r"strings\.csv.*'item_id'.*'three'.*int64",
        ),
        "bad timestamp": (
            [_write_csv(tmp_path / "time.csv", bad_time)],
            r"time\.csv.*'time'.*next tuesday.*%Y-%m-%d",
        ),
        "duplicate event_id": (
            [ok, _write_csv(tmp_path / "dup.csv", duplicated)],
            r"dup\.csv.*ok\.csv.*'event_id'.*unique",
        ),
        "empty file": ([tmp_path / "empty.csv"], r"empty\.csv.*empty file.*expected"),
        "header only": ([tmp_path / "header.csv"], r"header\.csv.*no rows.*expected"),
    }


@pytest.mark.parametrize(
    "case",
    ["missing column", "mistyped column", "bad timestamp", "duplicate event_id", "empty file", "header only"],
)
def test_import_table_bad_input_names_file_column_and_expectation(tmp_path: Path, case: str) -> None:
    spec_path = _table_spec(tmp_path)
    out = tmp_path / "out"
    existing = write_events(
        pa.table({"event_id": [7], "ts": [86_400], "user_id": [1], "item_id": [2], "surface": ["web"], "click": [1.0],
                  "tags": [[1]], "price": [2.0]}),
        TableImportSpec.load(spec_path).dataset,
        out,
    )  # fmt: skip
    before = _snapshot(existing)
    files, pattern = _error_cases(tmp_path)[case]
    with pytest.raises(EventLogError, match=pattern):
        import_table(spec_path, files, out)
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_import_table_checks_click_values_and_surfaces(tmp_path: Path) -> None:
    spec_path = _table_spec(
        tmp_path,
        click_threshold=None,
        columns={"ts": "time", "user_id": "uid", "click": "rating", "surface": "page"},
    )
    rows = _shop_rows()
    rows["page"] = ["web"] * 12
    with pytest.raises(EventLogError, match=r"a\.csv.*'rating'.*'click'.*0/1"):
        import_table(spec_path, [_write_csv(tmp_path / "a.csv", rows)], tmp_path / "out")
    rows["rating"] = [1] * 12
    rows["page"] = ["web"] * 11 + ["tv"]
    with pytest.raises(EventLogError, match=r"b\.csv.*'page'.*'surface'.*\['tv'\].*\['web', 'app'\]"):
        import_table(spec_path, [_write_csv(tmp_path / "b.csv", rows)], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_table_bad_spec(tmp_path: Path) -> None:
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text("name: x\nsurfaces: [web]\nfeatures: []\nclick_treshold: 4\n")
    with pytest.raises(EventLogError, match=r"spec\.yaml.*click_treshold"):
        import_table(spec_path, [tmp_path / "a.csv"], tmp_path / "out")


# ---------------------------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_real_wheels_import_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # let pip run
    cache = tmp_path / "cache"
    try:
        wheels.fetch_wheel("recbole", movielens.RECBOLE_VERSION, cache, sha256=movielens.RECBOLE_SHA256)
        wheels.fetch_wheel("obp", open_bandit.OBP_VERSION, cache, sha256=open_bandit.OBP_SHA256)
    except wheels.WheelFetchError as error:
        pytest.skip(f"pip download failed: {error}")
    log = EventLog(import_movielens_100k(tmp_path / "ml", cache_dir=cache))
    table = log.read_all(["event_id", "user_id", "item_id", "click"])
    assert table.num_rows == 100_000
    assert (
        pl.from_arrow(table)["user_id"].n_unique() == 943
        and pl.from_arrow(table)["item_id"].n_unique() == 1682
    )
    train_end, valid_end = movielens_split_points(log)
    assert (train_end, valid_end) == (80_000, 90_000)
    ids, users = table["event_id"].to_numpy(), table["user_id"].to_numpy()
    unseen = ~np.isin(users[ids >= valid_end], users[ids < train_end])
    assert 0.8 < unseen.mean() < 0.9  # ~86% of test rows come from users unseen in training
    obd = EventLog(import_open_bandit(tmp_path / "obd", cache_dir=cache))
    assert obd.num_rows() == 10_000 and len(obd.days) == 7
    every = EventLog(
        import_open_bandit(
            tmp_path / "obd6", cache_dir=cache, campaigns=open_bandit.CAMPAIGNS, policies=open_bandit.POLICIES
        )
    )
    table = every.read_all(["item_id", "click"])
    assert every.num_rows() == 60_000 and pc.sum(table["click"]).as_py() == 287
    assert pc.count_distinct(table["item_id"]).as_py() == 80 + 34 + 46
