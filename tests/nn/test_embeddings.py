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
