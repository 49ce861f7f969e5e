"""The audience population: seeded chunks, providers' labels drawn at their stated rates, Parquet
round trip, and a population folded from an event log."""

from __future__ import annotations

import numpy as np

from fxrec.audience.events import EventAudienceSpec, population_from_events
from fxrec.audience.population import (
    PopulationConfig,
    audience_schema,
    generate_chunk,
    iter_chunks,
    provider_truth,
    read_population,
    write_population,
)
from fxrec.audience.schema import has_bit

CONFIG = PopulationConfig(users=30_000, chunk_size=12_000, interests=40)


def test_chunks_are_seeded_and_sized():
    chunks = list(iter_chunks(CONFIG))
    assert [len(c) for c in chunks] == [12_000, 12_000, 6_000]
    again = generate_chunk(CONFIG, 1)
    assert np.array_equal(again.segments["dmp_a"], chunks[1].segments["dmp_a"])
    assert np.array_equal(np.concatenate([c.user_id for c in chunks]), np.arange(30_000))
    assert all(c.total_impressions.min() >= 1 for c in chunks)
    ages = np.concatenate([c.numeric["age"] for c in chunks])
    assert ages.min() >= 13 and ages.max() <= 80


def test_provider_labels_have_their_precision_and_recall():
    config = PopulationConfig(users=60_000, chunk_size=60_000, interests=8)
    chunk = generate_chunk(config, 0)
    truth = provider_truth(config)
    for name, rates in truth["providers"].items():
        for k in range(3):  # the common segments: enough users for tight rates
            label, real = has_bit(chunk.segments[name], k), has_bit(chunk.segments["interest"], k)
            assert abs((label & real).sum() / label.sum() - rates["precision"][k]) < 0.03
            assert abs((label & real).sum() / real.sum() - rates["recall"][k]) < 0.03
    precision = [np.mean(r["precision"]) for r in truth["providers"].values()]
    assert len(set(np.round(precision, 2))) == len(precision)  # providers differ


def test_write_and_read_back(tmp_path):
    write_population(CONFIG, tmp_path / "pop")
    schema, chunks = read_population(tmp_path / "pop")
    assert schema == audience_schema(CONFIG)
    for read, made in zip(chunks, iter_chunks(CONFIG), strict=True):
        assert np.array_equal(read.impressions, made.impressions)
        assert np.array_equal(read.segments["interest"], made.segments["interest"])
        assert np.array_equal(read.categorical["region"], made.categorical["region"])


def test_population_from_an_event_log(tmp_path):
    from fxrec.data.simulator import SimulatorConfig, simulate_to

    world = SimulatorConfig(
        days=2,
        impressions_per_day=2000,
        users=300,
        ads=60,
        advertisers=10,
        new_ads_per_day=5,
        new_users_per_day=5,
    )
    simulate_to(world, tmp_path / "events", progress=False)
    spec = EventAudienceSpec(numeric={"age": "age_bucket"})
    schema, users = population_from_events(tmp_path / "events", spec, tmp_path / "pop")
    assert int(users.impressions.sum()) == 4000
    assert len(np.unique(users.user_id)) == len(users)
    assert set(schema.surfaces) == {"feed", "stories", "video"}
    read_schema, chunks = read_population(tmp_path / "pop")
    assert read_schema == schema and len(next(chunks)) == len(users)


def test_a_real_table_through_the_importer(tmp_path):
    """A CSV of impressions with user attributes -> `import_table` with a spec -> a population."""
    from fxrec.data.sources.table import import_table

    (tmp_path / "spec.yaml").write_text(
        "name: shop\n"
        "surfaces: [web, app]\n"
        "features:\n"
        "  - {name: country, kind: sparse, cardinality: 300}\n"
        "  - {name: age, kind: dense}\n"
        "  - {name: tags, kind: multi, cardinality: 100}\n"
        "encode: {country: dict}\n"
    )
    rows = [
        "event_id,ts,user_id,item_id,surface,click,country,age,tags",
        "1,1700000000,7,1,web,0,DE,31,3|5",
        "2,1700000100,7,2,app,1,DE,31,5",
        "3,1700000200,8,1,app,0,FR,45,",
        "4,1700000300,9,3,web,0,DE,19,9",
        "5,1700000400,9,3,web,1,DE,19,9",
    ]
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    import_table(tmp_path / "spec.yaml", [tmp_path / "log.csv"], tmp_path / "events")
    spec = EventAudienceSpec(
        categorical={"country": "country"}, numeric={"age": "age"}, segments={"tag": "tags"}
    )
    schema, users = population_from_events(tmp_path / "events", spec)
    assert users.user_id.tolist() == [7, 8, 9]
    assert users.impressions.tolist() == [[1, 1], [0, 1], [2, 0]]  # surfaces in the spec's order: web, app
    assert users.numeric["age"].tolist() == [31, 45, 19]
    assert schema.segments["tag"] == ("3", "5", "9")
    assert [has_bit(users.segments["tag"], k).tolist() for k in range(3)] == [
        [True, False, False],
        [True, False, False],
        [False, False, True],
    ]
    from fxrec.audience.evaluate import reach
    from fxrec.audience.query import parse

    reached, impressions = reach(parse("tag:5 or surface = app", schema), users)
    assert reached.tolist() == [True, True, False] and impressions.tolist() == [2, 1, 0]
