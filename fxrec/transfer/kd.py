"""KD: one head trained on true labels plus the FM's soft labels -- the baseline every paper compares to.

    L = BCE(y_vm, y) + weight * T^2 * BCE(y_vm / T, sigmoid(y_fm / T))

The FM's bias reaches the serving head directly here; ExFM's auxiliary head exists to avoid that.
With temperature T the soft term's gradient in y_vm is T * (sigmoid(y_vm / T) - sigmoid(y_fm / T)),
which tends to (y_vm - y_fm) / 4 as T grows: the T^2 factor (Hinton et al., 2015) keeps the soft
term's pull the same size whatever T, so changing T does not silently reweight it against the labels.
"""

from __future__ import annotations

import torch

from fxrec.data.batches import Batch, EventFrame
from fxrec.transfer.base import FM_LOGITS, TransferChannel, attach_logits, fm_targets, soft_bce


class KnowledgeDistillation(TransferChannel):
    name = "kd"
    input_key = FM_LOGITS

    def __init__(self, dim: int, tasks: list[str], weight: float = 1.0, temperature: float = 1.0):
        super().__init__(dim, tasks)
        self.weight = weight
        self.temperature = temperature

    def attach(self, frame: EventFrame, published) -> None:
        attach_logits(frame, published, self.tasks)

    def loss(self, output, batch: Batch) -> torch.Tensor:
        total = torch.zeros(())
        for task in self.tasks:
            fm_logits, found = fm_targets(batch, task)
            target = torch.sigmoid(fm_logits / self.temperature)
            total = total + soft_bce(output.logits[task] / self.temperature, target, found)
        return self.weight * self.temperature**2 * total
