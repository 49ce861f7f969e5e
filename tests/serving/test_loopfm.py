"""LoopFM at serving: the user's representation history is cut as of the request, as in training."""

from __future__ import annotations

import numpy as np
import torch

from fxrec.data.inputs import JaggedInput
from fxrec.data.reader import iter_frames
from fxrec.run import Run
from fxrec.serving.loopfm import LoopFMLog
from fxrec.transfer.published import PublishedFM


def test_served_sequences_match_the_training_join(served_run, small_log):
    directory = Run(served_run).publish_dir("fm", 0)
    served = LoopFMLog.from_publish(directory)
    published = PublishedFM(directory)
    features = [small_log.spec.feature("item_id")]
    frame = None
    for _, frame in iter_frames(small_log, features):
        view = published.view(frame)
    assert frame is not None
    offsets, codes, _ = view.loopfm_sequences(max_len=5, retention_days=1.5)
    users, ts = frame.meta["user_id"].numpy(), frame.meta["ts"].numpy()
    checked = 0
    for row in range(0, frame.num_rows, 97):
        expected = codes[offsets[row] : offsets[row + 1]].numpy()
        got = served.sequence(
            int(users[row]), int(ts[row]), max_len=5, retention_days=1.5, code_dim=expected.shape[1]
        )
        np.testing.assert_array_equal(got, expected)
        checked += int(len(expected) > 0)
    assert checked > 5


def test_the_served_input_repeats_the_sequence_per_candidate():
    log = LoopFMLog({7: (np.array([1, 2, 3]), np.arange(6, dtype=np.int8).reshape(3, 2))}, width=2)
    sequence = log.sequence(7, ts=3, max_len=5, retention_days=1.0, code_dim=2)
    assert sequence.tolist() == [[0, 1], [2, 3]]  # strictly before ts=3
    served = JaggedInput.repeat(sequence, rows=3)
    assert served.offsets.tolist() == [0, 2, 4, 6]
    assert torch.equal(served.values[2:4], torch.from_numpy(sequence))
    assert log.sequence(8, ts=3, max_len=5, retention_days=1.0, code_dim=2).shape == (0, 2)
