"""The last-item transition term: what the intent carries, and what training updates."""

import torch

from seqrec.services.trainer.losses import NegativeSampler
from seqrec.services.trainer.model import BERT4Rec, ModelConfig
from seqrec.services.trainer.train import ClozeLoss
from seqrec.shared.history import encode_histories

N_ITEMS, MASK = 30, 31


def _model() -> BERT4Rec:
    torch.manual_seed(0)
    return BERT4Rec(ModelConfig(n_indices=N_ITEMS + 2, max_len=8, hidden_size=16, heads=2, transition_dim=4))


def test_intent_carries_the_transition_query_of_the_last_history_item():
    model = _model().eval()
    ids = torch.from_numpy(encode_histories([[3, 9, 4], [7], []], 8, MASK))
    transition = model(ids)[:, 16:20]
    torch.testing.assert_close(transition[0], model.prev_emb.weight[4])  # the newest item before [MASK]
    torch.testing.assert_close(transition[1], model.prev_emb.weight[7])
    assert transition[2].abs().sum() == 0  # no history: nothing to transition from
    vectors = model.item_vectors()
    assert vectors.shape == (N_ITEMS + 2, model.cfg.layout.dim) == (N_ITEMS + 2, 16 + 4 + 1)
    torch.testing.assert_close(vectors[:, 16:20], model.next_emb.weight)


def test_previous_items_are_the_slots_before_each_slot():
    ids = torch.tensor([[0, 0, 5, 6, MASK], [1, 2, 3, 4, 5]])
    assert BERT4Rec.previous_items(ids).tolist() == [[0, 0, 0, 5, 6], [0, 1, 2, 3, 4]]


def test_training_updates_the_transitions_from_the_item_before_each_masked_slot():
    model = _model().train()
    inputs = torch.tensor([[0, 0, 5, 6, MASK], [0, 1, 2, MASK, 4]])
    labels = torch.tensor([[0, 0, 0, 0, 9], [0, 0, 0, 3, 0]])
    generator = torch.Generator().manual_seed(0)
    sampler = NegativeSampler(torch.ones(N_ITEMS + 2), N_ITEMS)
    loss = ClozeLoss(model, N_ITEMS, sampler, 5, generator, generator)(inputs, labels)
    loss.backward()
    touched = model.prev_emb.weight.grad.abs().sum(1).nonzero().squeeze(1).tolist()
    assert touched == [2, 6]  # the items just before the two masked slots
    assert model.next_emb.weight.grad[9].abs().sum() > 0 and model.next_emb.weight.grad[3].abs().sum() > 0
