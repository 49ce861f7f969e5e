import torch
from torchrec import KeyedJaggedTensor

from fxrec.nn.admission import FrequencyAdmission


def _kjt(items, history):
    return KeyedJaggedTensor(
        keys=["item_id", "hist_item_id"],
        values=torch.tensor(items + history),
        lengths=torch.tensor([1] * len(items) + [1] * len(history)),
    )


def test_ids_share_row_zero_until_seen_min_count_times_in_training():
    admission = FrequencyAdmission({"item_id": 10}, {"item_id": "item_id", "hist_item_id": "item_id"}, {"item_id"}, min_count=2)
    admission.train()
    first = admission(_kjt([3, 3], [3, 3]))
    assert first.values().tolist() == [0, 0, 0, 0]  # counts are read before this batch adds to them
    second = admission(_kjt([3, 4], [3, 4]))
    assert second.values().tolist() == [3, 0, 3, 0]
    assert int(admission.count_item_id[3]) == 3 and int(admission.count_item_id[4]) == 1  # histories do not count


def test_evaluation_does_not_count_and_state_is_checkpointed():
    admission = FrequencyAdmission({"item_id": 10}, {"item_id": "item_id"}, {"item_id"}, min_count=1)
    admission.eval()
    kjt = KeyedJaggedTensor(keys=["item_id"], values=torch.tensor([5, 5, 5]), lengths=torch.tensor([1, 1, 1]))
    assert admission(kjt).values().tolist() == [0, 0, 0]
    assert int(admission.count_item_id.sum()) == 0
    assert "count_item_id" in admission.state_dict()


def test_disabled_admission_is_the_identity():
    admission = FrequencyAdmission({"item_id": 10}, {"item_id": "item_id"}, {"item_id"}, min_count=0)
    kjt = KeyedJaggedTensor(keys=["item_id"], values=torch.tensor([7]), lengths=torch.tensor([1]))
    assert admission(kjt) is kjt
