"""Causal mode: what training scores for a window's newest item is exactly what serving scores for the
history before it, and a causal bundle trains and answers end to end."""

import numpy as np
import torch

from seqrec.services.trainer.masking import causal_targets
from seqrec.services.trainer.model import BERT4Rec, ModelConfig
from seqrec.shared.history import encode_histories

N_INDICES, MAX_LEN = 52, 12
MASK = N_INDICES - 1


def _model() -> BERT4Rec:
    torch.manual_seed(0)
    return BERT4Rec(ModelConfig(n_indices=N_INDICES, max_len=MAX_LEN, hidden_size=16, heads=2, transition_dim=8,
                                causal=True)).eval()


def test_training_answer_for_the_newest_item_is_the_serving_intent():
    model = _model()
    rng = np.random.default_rng(0)
    for length in (2, 5, MAX_LEN):
        window = rng.integers(1, MASK, size=length)
        row = torch.zeros(1, MAX_LEN, dtype=torch.long)
        row[0, MAX_LEN - length:] = torch.from_numpy(window)
        inputs, labels = causal_targets(row, MASK)
        assert labels[0, -1] == window[-1]
        with torch.no_grad():
            hidden = model.project(model.encode(inputs)[0, -2])  # the slot before the newest item answers
            query = model.transition_query(model.previous_items(inputs)[0, -1])
            served = model(torch.from_numpy(encode_histories([window[:-1].tolist()], MAX_LEN, MASK, pad_to=MAX_LEN)))
        assert torch.allclose(served[0, :16], hidden, atol=1e-5)
        assert torch.allclose(served[0, 16:24], query, atol=1e-5)


def test_a_slot_never_sees_what_comes_after_it():
    model = _model()
    ids = torch.randint(1, MASK, (1, MAX_LEN))
    changed = ids.clone()
    changed[0, 7:] = torch.randint(1, MASK, (MAX_LEN - 7,))
    with torch.no_grad():
        assert torch.allclose(model.encode(ids)[0, :7], model.encode(changed)[0, :7], atol=1e-6)
        assert not torch.allclose(model.encode(ids)[0, 7:], model.encode(changed)[0, 7:], atol=1e-3)
