"""SparseArch's pooled fast path: the same tokens, gradients and fused updates as TorchRec's own forward."""

from __future__ import annotations

import pytest
import torch
from torchrec import PoolingType

from fxrec.data.reader import iter_frames
from fxrec.data.schema import FeatureKind
from fxrec.nn.embeddings import SparseArch


def _reference_tokens(arch: SparseArch, batch) -> torch.Tensor:
    """TorchRec's FusedEmbeddingBagCollection.forward, tokens taken by name (its KeyedTensor keys)."""
    kjt = batch.sparse
    if arch.sequence_keys:
        from torchrec import KeyedJaggedTensor

        kjt = KeyedJaggedTensor.concat([batch.sparse, batch.sequences])
    pooled = arch.collection(kjt)
    names = [f for table in arch.collection.embedding_bag_configs() for f in table.feature_names]
    # TorchRec concatenates its fused groups in group order; read each token at its group position.
    groups = [f for tables in arch.collection._key_to_tables.values() for t in tables for f in t.feature_names]
    values = pooled.values().reshape(batch.size, -1, arch.dim)
    return torch.stack([values[:, groups.index(name)] for name in names], dim=1)


def _seeded(spec, features) -> SparseArch:
    torch.manual_seed(0)
    return SparseArch(spec, features, dim=8)


@pytest.mark.parametrize("role", ["vm", "fm"])
def test_direct_lookup_matches_torchrec_forward_and_updates(small_log, role):
    spec = small_log.spec
    features = spec.select(None, role)
    arch, twin = (_seeded(spec, features) for _ in range(2))  # deepcopy would un-alias the TBE's weights
    pooling = {c.name: c.pooling for c in arch.collection.embedding_bag_configs()}
    if role == "fm":  # the history shares item_id's table, so that table stays MEAN; single-id tables are SUM
        assert pooling["item_id"] is PoolingType.MEAN and pooling["hour"] is PoolingType.SUM
    _, frame = next(iter_frames(small_log, features, days=small_log.days[1:2]))
    batch = frame.take(torch.randperm(frame.num_rows, generator=torch.Generator().manual_seed(1))[:256])

    fast, _ = arch(batch.sparse, batch.sequences, batch.sequence_ages)
    reference = _reference_tokens(twin, batch)
    torch.testing.assert_close(fast, reference, rtol=0, atol=0)

    grad = torch.randn_like(fast)
    fast.backward(grad)  # the fused row-wise AdaGrad updates the rows inside backward
    reference.backward(grad)
    for name, weight in arch.collection.state_dict().items():
        torch.testing.assert_close(weight, twin.collection.state_dict()[name], rtol=0, atol=0)


def test_single_id_tables_pool_with_sum_and_equal_mean(small_log):
    """A bag of one id: SUM and MEAN give the same token bit for bit, so the fast SUM kernel is exact."""
    spec = small_log.spec
    features = [f for f in spec.select(None, "vm") if f.kind is FeatureKind.sparse]
    arch = SparseArch(spec, features, dim=8, fused=False)
    assert all(c.pooling is PoolingType.SUM for c in arch.collection.embedding_bag_configs())
    _, frame = next(iter_frames(small_log, features, days=small_log.days[:1]))
    batch = frame.batch(0, 128)
    summed = arch.collection(batch.sparse).values()
    for config in arch.collection.embedding_bag_configs():
        config.pooling = PoolingType.MEAN
    from torchrec import EmbeddingBagCollection

    mean = EmbeddingBagCollection(tables=arch.collection.embedding_bag_configs())
    mean.load_state_dict(arch.collection.state_dict())
    torch.testing.assert_close(mean(batch.sparse).values(), summed, rtol=0, atol=0)


def test_event_types_are_the_surfaces_of_earlier_clicks(tmp_path):
    """The spec's `event_types` gives every history entry its event type: here the surface of that past
    click, in the history's order, from clicks strictly before the event (checked against the raw log)."""
    import numpy as np

    from fxrec.data.eventlog import EventLog
    from fxrec.data.simulator import SimulatorConfig, simulate_to

    config = SimulatorConfig(days=3, impressions_per_day=1500, users=200, ads=60, history_length=4, history_surfaces=True)
    simulate_to(config, tmp_path / "events", progress=False)
    log = EventLog(tmp_path / "events")
    features = [log.spec.feature(n) for n in ("item_id", "hist_item_id", "hist_surface_id")]
    assert log.spec.feature("hist_item_id").event_types == "hist_surface_id"  # the simulator declares it
    arch = SparseArch(log.spec, features, dim=8, jagged_sequences=True, fused=False)
    assert arch.type_feature == "hist_surface_id"
    day = log.days[2]
    _, frame = next(iter_frames(log, features, days=[day]))
    rows = 300
    batch = frame.take(torch.arange(rows))
    _, sequence = arch(batch.sparse, batch.sequences, batch.sequence_ages)
    assert sequence is not None and sequence.types is not None

    raw = [log.read_day(d, ["ts", "user_id", "surface_id", "click"]).to_pydict() for d in log.days[:3]]
    earlier = {k: sum((r[k] for r in raw[:2]), []) for k in raw[0]}  # whole earlier days
    today = raw[2]
    offsets = sequence.offsets.tolist()
    checked = 0
    for row in range(rows):
        user, ts = today["user_id"][row], today["ts"][row]
        clicks = [
            (t, s)
            for src in (earlier, today)
            for u, t, s, c in zip(src["user_id"], src["ts"], src["surface_id"], src["click"], strict=True)
            if u == user and c > 0 and t < ts
        ]
        expected = [s for _, s in sorted(clicks, key=lambda x: x[0])[-config.history_length :]]
        got = sequence.types[offsets[row] : offsets[row + 1]].tolist()
        assert got == expected, f"row {row}: types {got}, surfaces of earlier clicks {expected}"
        checked += len(got)
    assert checked > 50 and len(set(sequence.types.tolist())) == len(config.surfaces)
    np.testing.assert_array_equal(sequence.offsets.numpy(), batch.sequences["hist_item_id"].offsets().numpy())


def test_the_event_type_feature_comes_from_the_spec():
    """SparseArch reads a history's event types from the spec (`event_types` on the sequence feature): a
    spec that declares none gives none, and a model without the declared feature (or with a pooled
    history) has no types to read."""
    from fxrec.data.schema import DatasetSpec

    features = [
        {"name": "item_id", "kind": "sparse", "cardinality": 16},
        {"name": "surface_id", "kind": "sparse", "cardinality": 4},
        {"name": "hist_item_id", "kind": "sequence", "source": "item_id", "table": "item_id"},
        {"name": "hist_surface_id", "kind": "sequence", "source": "surface_id", "table": "surface_id"},
    ]
    plain = DatasetSpec(name="d", surfaces=["web"], features=features)  # a spec.yaml from before the key
    typed = DatasetSpec(
        name="d", surfaces=["web"], features=[{**f, "event_types": "hist_surface_id"} if f["name"] == "hist_item_id" else f for f in features]
    )

    def arch(spec, names, jagged=True):
        return SparseArch(spec, [spec.feature(n) for n in names], dim=4, jagged_sequences=jagged, fused=False)

    everything = ["item_id", "hist_item_id", "hist_surface_id"]
    assert arch(plain, everything).type_feature is None
    assert arch(typed, everything).type_feature == "hist_surface_id"
    assert arch(typed, ["item_id", "hist_item_id"]).type_feature is None  # the model lacks the type feature
    assert arch(typed, everything, jagged=False).type_feature is None  # a pooled history carries no types
    with pytest.raises(ValueError, match="must name another sequence feature"):
        DatasetSpec(name="d", surfaces=["web"], features=[{**features[2], "event_types": "surface_id"}, *features[:2]])
