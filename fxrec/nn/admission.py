"""Frequency admission: an id gets its own embedding row only after training has seen it enough.

Until then it shares row 0, the feature's out-of-vocabulary row. In a streaming log that row
learns what a *new* ad or user looks like, so a cold-start id is scored with that prior instead
of an untrained random row (which, next to rows that did train, mis-calibrates new ids). This is
FuxiCTR's `min_categr_count` and TorchRec's managed-collision admission, done online: counts
grow as training streams, and they are buffers, so checkpoints carry them.

Counts come from single- and multi-valued features only; sequence features that share a table
(the history of `item_id`) are remapped with the same counts but do not add to them.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec import KeyedJaggedTensor


class FrequencyAdmission(nn.Module):
    """Remaps KJT rows: row -> row if seen >= `min_count` times in training, else 0.

    Args:
        table_rows: {table: number of rows}
        feature_tables: {feature: table} for every feature the KJTs may contain
        counted: features whose occurrences count (not histories)
        min_count: occurrences before an id gets its own row; 0 disables admission
    """

    def __init__(self, table_rows: dict[str, int], feature_tables: dict[str, str], counted: set[str], min_count: int):
        super().__init__()
        self.min_count = min_count
        self.feature_tables = dict(feature_tables)
        self.counted = set(counted)
        for table, rows in table_rows.items():
            self.register_buffer(f"count_{table}", torch.zeros(rows, dtype=torch.int32), persistent=True)

    def forward(self, kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        if self.min_count <= 0:
            return kjt
        chunks = kjt.values().split(kjt.length_per_key())
        # Every key reads the counts as they were before this batch; only then does the batch count.
        remapped = []
        for key, rows in zip(kjt.keys(), chunks, strict=True):
            counts = getattr(self, f"count_{self.feature_tables[key]}")
            remapped.append(torch.where(counts[rows] >= self.min_count, rows, torch.zeros_like(rows)))
        if self.training:
            for key, rows in zip(kjt.keys(), chunks, strict=True):
                if key in self.counted:
                    counts = getattr(self, f"count_{self.feature_tables[key]}")
                    counts.index_add_(0, rows, torch.ones_like(rows, dtype=torch.int32))
        return KeyedJaggedTensor(
            keys=kjt.keys(),
            values=torch.cat(remapped) if remapped else kjt.values(),
            lengths=kjt.lengths(),
            weights=kjt.weights_or_none(),
        )
