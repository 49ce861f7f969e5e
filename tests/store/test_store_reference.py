"""The fast backends agree with the plain per-key reference on random operation sequences."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fxrec.store import MemoryStore

DIM = 4
KEEP = 3
TTL = 30
USERS = list(range(-3, 6))
PAIRS = [(u, i) for u in range(3) for i in range(3)]

put_op = st.tuples(
    st.booleans(),  # pair keys?
    st.lists(st.integers(0, 8), min_size=1, max_size=10),  # key positions (repeats allowed)
    st.integers(0, 6),  # version
    st.integers(0, 60),  # ts
)


@pytest.mark.parametrize("backend", ["lmdb", "redis"])
@pytest.mark.parametrize("dtype", ["float32", "int8"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(put_op, min_size=1, max_size=12), now=st.integers(0, 90), seed=st.integers(0, 2**16))
def test_matches_reference(make_store, dtype, ops, now, seed):
    namespace = uuid.uuid4().hex  # hypothesis reuses the fixture: a fresh namespace per example
    store = make_store(dim=DIM, keep_versions=KEEP, dtype=dtype, ttl_seconds=TTL, namespace=namespace)
    reference = MemoryStore(dim=DIM, keep_versions=KEEP, dtype=dtype, ttl_seconds=TTL)
    rng = np.random.default_rng(seed)
    for is_pair, positions, version, ts in ops:
        keys = np.array([PAIRS[p] for p in positions]) if is_pair else np.array([USERS[p] for p in positions])
        values = rng.standard_normal((len(keys), DIM)).astype(np.float32)
        timestamps = ts + rng.integers(0, 5, len(keys))
        store.put(keys, values, version=version, ts=timestamps)
        reference.put(keys, values, version=version, ts=timestamps)
    for keys in (np.array(USERS), np.array(PAIRS)):
        got, want = store.get(keys, now=now), reference.get(keys, now=now)
        for field in ("found", "version", "ts", "vectors"):
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
        for got_part, want_part in zip(store.get_history(keys, now=now), reference.get_history(keys, now=now), strict=True):
            np.testing.assert_array_equal(got_part, want_part)
        for k in (1, 2, 3):
            got, want = store.get_stabilized(keys, k=k, now=now), reference.get_stabilized(keys, k=k, now=now)
            np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-6)
            for field in ("found", "version", "ts"):
                np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
