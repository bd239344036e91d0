"""BERT4Rec: a bidirectional Transformer encoder over item sequences, trained with the Cloze task.

Hybrid mode (`text_dim > 0`): every item's representation, in the input and in the output item
vectors, is its learned id embedding plus a learned projection of its frozen MiniLM text
embedding. Items without interactions have no id part, and in training a random share of items
(`id_dropout`) loses its id part at each step, so text alone learns to stand for an item.

New items: catalog-only items are, in practice, new arrivals, and new arrivals behave unlike a random
old item without its id (they are wanted by whoever is following the newest items, and have no
track record). A learned "new item" vector (input and output) and bias mark every item known only by
its text because it is new. The most recently introduced warm items (`freshness.newest_items`) are new
items too, in training and in the bundle: their track record is short, and as training targets they
teach the marks, from real late-timeline behaviour, how new arrivals are consumed.
Content affinity (hybrid): the score of an item also holds `u · text(item)`, where the query `u` is a
learned weighting of the raw MiniLM embeddings of the last `CONTENT_TAPS` history items. The full
384-d text similarity to what the user just consumed survives (the projection to `hidden_size` keeps
only a coarse part of it), which is what ranks new items among themselves.
`fused()` folds text and marks into plain embedding tables for export, so serving sees one architecture.

Last-item transitions (`transition_dim` > 0): every score also holds `prev(last item) · next(item)`, a
factorized first-order Markov chain (the "FMC" of Rendle et al.'s FPMC) learned jointly with the encoder.
What follows what is a sparse, high-rank pattern that the 64-wide encoder compresses poorly: a plain
first-order Markov chain beat the encoder alone on both benchmark datasets (docs/training_benchmark.md).

Causal mode (`causal`, an option beside the Cloze model): attention only looks back, and the intent for a
slot is read at the slot before it, which has seen exactly the items before the answer. Trained like SASRec:
every item of a window is the target of the slot before it, so a row carries one target per item instead of
Cloze's few. It answers next-item queries like the Cloze model; a gap is answered from the items before it.

Scoring: `intent(ids)` [B, D] · `item_vectors()` [n_indices, D] is exactly the model's logit for every item
(columns: `shared.manifest.Layout`). Export hands `item_parts()` to the torch-free scoring contract
(`seqrec.shared.scoring`), which rebuilds the same rows and owns every term added after training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seqrec.services.trainer.losses import CandidateRows
from seqrec.services.trainer.sparse_rows import RowAdamW, gather_rows
from seqrec.shared.manifest import Layout
from seqrec.shared.scoring import NEW_ITEM, UNSEEN, ItemParts, TextHead
from seqrec.shared.vocab import PAD_INDEX


@dataclass(frozen=True)
class ModelConfig:
    n_indices: int  # embedding rows: padding, items, [MASK]
    max_len: int = 50  # positions, the [MASK] slot included
    hidden_size: int = 64  # model width
    depth: int = 2  # encoder blocks
    heads: int = 4  # attention heads; hidden_size % heads == 0
    dropout: float = 0.1  # dropout everywhere
    weight_tying: bool = False  # output item vectors share the input embedding table
    use_attention_mask: bool = True  # keys at padding positions are not attended
    text_dim: int = 0  # > 0: hybrid model over frozen text embeddings of this width
    id_dropout: float = 0.0  # hybrid training: share of items (with text) whose id part is hidden per step
    content_dim: int = 0  # > 0: content affinity over frozen text embeddings of this width (hybrid and its export)
    transition_dim: int = 0  # > 0: factorized last-item transitions of this width
    causal: bool = False  # next-item mode: each slot attends to itself and the slots before it (SASRec-style)

    @property
    def layout(self) -> Layout:
        """Column groups of intents and item vectors: output vector, item text, transition vector, bias."""
        return Layout(self.hidden_size, self.content_dim, self.transition_dim)


CONTENT_TAPS = 8  # history items (newest first) whose text forms the content-affinity query
GATE_SCALE = 10.0  # scalar gates (content taps, new-item bias and content weight) are stored / GATE_SCALE:
# AdamW moves a parameter about lr per step, and these need to travel several units in a few thousand steps


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, c = x.shape  # (B, T, C)
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))  # (B, H, T, hs)
        # No dropout on the attention probabilities: it rules out the fused CPU kernel and made a
        # training step 1.85x slower (B=128, T=200, measured); dropout stays on embeddings, outputs, FFN.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        y = y.transpose(1, 2).reshape(b, t, c)
        return self.resid_drop(self.proj(y))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(cfg.hidden_size, 4 * cfg.hidden_size), nn.GELU(),
                                 nn.Linear(4 * cfg.hidden_size, cfg.hidden_size), nn.Dropout(cfg.dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    """Pre-LayerNorm Transformer block (stable without warm-up)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.hidden_size)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.hidden_size)
        self.ff = FeedForward(cfg)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), key_mask)
        return x + self.ff(self.ln2(x))


class BERT4Rec(nn.Module):
    def __init__(self, cfg: ModelConfig, text: torch.Tensor | None = None, n_warm: int | None = None,
                 newest: torch.Tensor | None = None):
        """`text` [n_indices, text_dim] (zero rows: no text) for a hybrid model; items 1..n_warm have interactions;
        `newest` [n_indices] bool marks the warm items that count as new ones (hybrid only)."""
        super().__init__()
        self.cfg = cfg
        # while training with sampled softmax: the item tables' optimizer; reads of their rows then give row-sparse
        # gradients and carry the optimizer's running weight-decay scale
        self.row_optimizer: RowAdamW | None = None
        d = cfg.hidden_size
        self.item_emb = nn.Embedding(cfg.n_indices, d, padding_idx=PAD_INDEX)
        self.pos_emb = nn.Embedding(cfg.max_len, d)
        self.emb_norm = nn.LayerNorm(d)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(d)
        # BERT's masked-LM head transform: dense → GELU → LayerNorm, then dot with item vectors.
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d))
        self.out_emb = None if cfg.weight_tying else nn.Embedding(cfg.n_indices, d)
        self.out_bias = nn.Parameter(torch.zeros(cfg.n_indices))
        if cfg.transition_dim:  # what an item leads to, and what leads to it
            self.prev_emb = nn.Embedding(cfg.n_indices, cfg.transition_dim, padding_idx=PAD_INDEX)
            self.next_emb = nn.Embedding(cfg.n_indices, cfg.transition_dim)
        if cfg.content_dim:
            if text is None or text.shape != (cfg.n_indices, cfg.content_dim):
                raise ValueError(f"content affinity needs text embeddings of shape "
                                 f"({cfg.n_indices}, {cfg.content_dim})")
            self.register_buffer("content", text.float(), persistent=False)
            self.content_taps = nn.Parameter(torch.zeros(CONTENT_TAPS))
        if cfg.text_dim:
            if text is None or text.shape != (cfg.n_indices, cfg.text_dim):
                raise ValueError(f"a hybrid model needs text embeddings of shape ({cfg.n_indices}, {cfg.text_dim})")
            n_warm = cfg.n_indices - 2 if n_warm is None else n_warm
            has_text = (text.abs().sum(1) > 0).float()
            new_item = torch.zeros(cfg.n_indices)
            new_item[n_warm + 1: cfg.n_indices - 1] = 1.0  # catalog-only items
            if newest is not None:
                new_item = torch.maximum(new_item, newest.float() * has_text)  # the newest warm items, by text
            id_known = torch.zeros(cfg.n_indices)
            id_known[1: n_warm + 1] = 1.0  # items seen in training ...
            id_known = id_known * (1.0 - new_item)  # ... unless they count as new
            id_known[cfg.n_indices - 1] = 1.0  # [MASK] is an id-only token
            catalog_only = torch.zeros(cfg.n_indices)
            catalog_only[n_warm + 1: cfg.n_indices - 1] = 1.0
            self.register_buffer("text", text.float(), persistent=False)
            self.register_buffer("has_text", has_text, persistent=False)
            self.register_buffer("id_known", id_known, persistent=False)
            self.register_buffer("new_item", new_item, persistent=False)
            self.register_buffer("catalog_only", catalog_only, persistent=False)
            self.text_in = nn.Linear(cfg.text_dim, d)
            self.text_out = None if cfg.weight_tying else nn.Linear(cfg.text_dim, d)
            self.text_bias = nn.Linear(cfg.text_dim, 1)
            self.new_in = nn.Parameter(torch.zeros(d))
            self.new_out = None if cfg.weight_tying else nn.Parameter(torch.zeros(d))
            self.new_bias = nn.Parameter(torch.zeros(()))
            if cfg.content_dim:  # extra weight of content affinity for new items
                self.new_content = nn.Parameter(torch.zeros(()))
        self.apply(self._init)
        if cfg.transition_dim:
            with torch.no_grad():
                self.prev_emb.weight[PAD_INDEX].zero_()  # nothing before the first item: no transition

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @torch.no_grad()
    def init_output_bias(self, item_counts: torch.Tensor) -> None:
        """Start the output bias at the log item frequency, so step 0 already ranks by popularity.

        With AdamW at lr 1e-3 a bias moves about 1e-3 per step; learning log-popularity gaps of
        several nats from zero would take thousands of steps.
        """
        log_prior = torch.log(item_counts.double() + 1.0)
        self.out_bias.copy_((log_prior - log_prior.mean()).to(self.out_bias.dtype))

    @property
    def hybrid(self) -> bool:
        return self.cfg.text_dim > 0

    def item_tables(self) -> list[nn.Parameter]:
        """The parameters with one row per item index: what `row_optimizer` trains row by row."""
        tables = [self.item_emb.weight, self.out_bias]
        tables += [] if self.out_emb is None else [self.out_emb.weight]
        tables += [self.prev_emb.weight, self.next_emb.weight] if self.cfg.transition_dim else []
        return tables

    def _embed(self, table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        if self.row_optimizer is None or not torch.is_grad_enabled():
            return table(ids)
        return gather_rows(table.weight, ids, table.padding_idx, self.row_optimizer.scale(table.weight))

    def _rows(self, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if self.row_optimizer is None or not torch.is_grad_enabled():
            return table[ids]
        return gather_rows(table, ids, scale=self.row_optimizer.scale(table))

    def id_keep(self, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """Per-index weight of the id part (hybrid only): 0 for new items; while training also 0 for a
        random `id_dropout` share of items with text; None for an id-only model."""
        if not self.hybrid:
            return None
        keep = self.id_known
        if self.training and self.cfg.id_dropout > 0:
            draw = torch.rand(keep.shape, generator=generator, device=keep.device)
            keep = keep * ~((draw < self.cfg.id_dropout) & (self.has_text > 0))
        return keep

    def _new_out(self) -> torch.Tensor:
        return self.new_in if self.new_out is None else self.new_out  # tied output: the input's mark

    def _new_mark(self, keep: torch.Tensor) -> torch.Tensor:
        """(n_indices, 1): 1 for new items (never an item whose id part is only dropped for this step)."""
        return (self.new_item * (1.0 - keep)).unsqueeze(-1)

    def _text_part(self, projection: nn.Linear, indices: torch.Tensor | None = None) -> torch.Tensor:
        text, has_text = (self.text, self.has_text) if indices is None else (self.text[indices], self.has_text[indices])
        return has_text.unsqueeze(-1) * projection(text)

    def output_weight(self, keep: torch.Tensor | None = None) -> torch.Tensor:
        """(n_indices, C) output item vectors (without the bias)."""
        base = self.item_emb.weight if self.out_emb is None else self.out_emb.weight
        if not self.hybrid:
            return base
        keep = self.id_known if keep is None else keep
        text = self._text_part(self.text_out or self.text_in)
        return base * keep[:, None] + text + self._new_mark(keep) * self._new_out()

    def output_bias(self, keep: torch.Tensor | None = None) -> torch.Tensor:
        """(n_indices,) output bias; a hybrid item without its id part gets a bias predicted from its text."""
        if not self.hybrid:
            return self.out_bias
        keep = self.id_known if keep is None else keep
        return (self.out_bias * keep + self._text_part(self.text_bias).squeeze(-1)
                + self._new_mark(keep).squeeze(-1) * GATE_SCALE * self.new_bias)

    def output_content(self, keep: torch.Tensor | None = None) -> torch.Tensor:
        """(n_indices, content_dim): item texts as scored by content affinity (new items weigh 1 + new_content)."""
        if not self.hybrid:
            return self.content
        return self.content * self._content_weight(keep)[:, None]

    def _content_weight(self, keep: torch.Tensor | None = None) -> torch.Tensor:
        """(n_indices,) weight of each item's text in content affinity: 1, or 1 + new_content for new items."""
        keep = self.id_known if keep is None else keep
        return 1.0 + self._new_mark(keep).squeeze(-1) * GATE_SCALE * self.new_content

    def embed_items(self, ids: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Input item representations (B, T, C)."""
        x = self._embed(self.item_emb, ids)
        if not self.hybrid:
            return x
        keep = self.id_known if keep is None else keep
        unique, inverse = ids.unique(return_inverse=True)  # project each distinct item's text once
        text = self._text_part(self.text_in, unique)[inverse]
        return x * keep[ids].unsqueeze(-1) + text + self._new_mark(keep)[ids] * self.new_in

    def encode(self, ids: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, T, C) for left-padded ids (B, T), T <= max_len.

        Positions count back from the last slot, so the newest slot is always position max_len - 1.
        """
        t = ids.shape[1]
        pos = torch.arange(self.cfg.max_len - t, self.cfg.max_len, device=ids.device)
        x = self.emb_drop(self.emb_norm(self.embed_items(ids, keep) + self.pos_emb(pos)))
        key_mask = (ids != PAD_INDEX)[:, None, None, :] if self.cfg.use_attention_mask else None  # (B,1,1,T)
        if self.cfg.causal:  # every slot also attends to itself, so a padding slot never has an empty row
            earlier = torch.ones(t, t, dtype=torch.bool, device=ids.device).tril()
            key_mask = earlier if key_mask is None else (key_mask & earlier) | torch.eye(t, dtype=torch.bool,
                                                                                            device=ids.device)
        for block in self.blocks:
            x = block(x, key_mask)
        return self.final_norm(x)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states at predicted positions (…, C) → output space (…, C)."""
        return self.head(hidden)

    def content_query(self, ids: torch.Tensor, slot: torch.Tensor | None = None) -> torch.Tensor:
        """(B, content_dim): the content-affinity query at `slot` (B,) of left-padded ids (B, T), default the last
        slot: tap k weighs the text of the item k slots before it (padding, [MASK] and slots before the row have
        none)."""
        b, t = ids.shape
        slot = ids.new_full((b,), t - 1) if slot is None else slot
        before = slot[:, None] - torch.arange(1, CONTENT_TAPS + 1, device=ids.device)  # (B, taps), newest first
        previous = ids.gather(1, before.clamp(min=0)) * (before >= 0)
        return torch.einsum("k,bkd->bd", GATE_SCALE * self.content_taps, self.content[previous])

    @staticmethod
    def previous_items(ids: torch.Tensor) -> torch.Tensor:
        """(B, T): the item in the slot before each slot of left-padded ids (padding before the first)."""
        return F.pad(ids[:, :-1], (1, 0), value=PAD_INDEX)

    def transition_query(self, previous: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """(…, transition_dim) transition queries of the items `previous` (…); items without an id part
        (new items, and in hybrid training those whose id is dropped) have none."""
        query = self._embed(self.prev_emb, previous)
        if not self.hybrid:
            return query
        keep = self.id_known if keep is None else keep
        return query * keep[previous].unsqueeze(-1)

    def transition_out(self, keep: torch.Tensor | None = None) -> torch.Tensor:
        """(n_indices, transition_dim) transition vectors of the items as next items."""
        if not self.hybrid:
            return self.next_emb.weight
        keep = self.id_known if keep is None else keep
        return self.next_emb.weight * keep[:, None]

    def output_rows(self, indices: torch.Tensor, keep: torch.Tensor | None = None) -> CandidateRows:
        """The rows of `item_vectors()`'s parts for `indices` (K,) only, as training scores them with `keep`:
        output vector with the transition vector appended, bias, and the item text of content affinity.
        Built from the touched rows alone (no catalogue-sized work); equal to indexing the full tables."""
        base = self._rows(self.item_emb.weight if self.out_emb is None else self.out_emb.weight, indices)
        bias = self._rows(self.out_bias, indices)
        known = None
        if self.hybrid:
            keep = self.id_known if keep is None else keep
            known = keep[indices]
            new = self.new_item[indices] * (1.0 - known)
            base = (base * known[:, None] + self._text_part(self.text_out or self.text_in, indices)
                    + new[:, None] * self._new_out())
            bias = (bias * known + self._text_part(self.text_bias, indices).squeeze(-1)
                    + new * GATE_SCALE * self.new_bias)
        if self.cfg.transition_dim:
            following = self._rows(self.next_emb.weight, indices)
            base = torch.cat([base, following if known is None else following * known[:, None]], dim=1)
        content = None
        if self.cfg.content_dim:
            content = self.content[indices]
            if self.hybrid:
                content = content * (1.0 + new * GATE_SCALE * self.new_content)[:, None]
        return CandidateRows(base, bias, content)

    def read_slot(self, ids: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """The slot whose hidden state answers for `slot` (B,): the slot itself, or in causal mode the one before
        it (it has seen exactly the items before `slot`), unless nothing comes before it (an empty history reads
        its [MASK] slot, however much padding it has)."""
        if not self.cfg.causal:
            return slot
        before = (slot - 1).clamp(min=0)
        has_item = (slot > 0) & (ids.gather(1, before[:, None]).squeeze(1) != PAD_INDEX)
        return torch.where(has_item, before, slot)

    def answer_slot(self, ids: torch.Tensor) -> torch.Tensor:
        """(B,) the slot each row is answered at: its last [MASK] (the last slot for a next-item row, an inner one
        for a gap), or the last slot when a row holds none."""
        t = ids.shape[1]
        marked = (ids == self.cfg.n_indices - 1).long() * torch.arange(1, t + 1, device=ids.device)
        slot = marked.amax(dim=1) - 1
        return torch.where(slot < 0, torch.full_like(slot, t - 1), slot)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Intent vectors (B, D) at each row's [MASK] slot (`answer_slot`): the projected hidden state, the content
        query (hybrid; at the last slot only, the one it is trained at), the transition query of the item before
        the slot, and a constant 1 that carries the bias."""
        slot = self.answer_slot(ids)
        hidden = self.encode(ids)
        read = self.read_slot(ids, slot)
        h = self.project(hidden.gather(1, read[:, None, None].expand(-1, 1, hidden.shape[-1])).squeeze(1))
        parts = [h]
        if self.cfg.content_dim:
            at_end = (slot == ids.shape[1] - 1).to(h.dtype)[:, None]
            parts.append(self.content_query(ids, slot) * at_end)
        if self.cfg.transition_dim:
            previous = self.previous_items(ids).gather(1, slot[:, None]).squeeze(1)
            parts.append(self.transition_query(previous))
        return torch.cat([*parts, torch.ones_like(h[:, :1])], dim=1)

    def item_vectors(self) -> torch.Tensor:
        """(n_indices, D): output item vectors, item texts (hybrid), transition vectors, and the bias as the
        last column."""
        parts = [self.output_weight(), self.output_content()] if self.cfg.content_dim else [self.output_weight()]
        if self.cfg.transition_dim:
            parts.append(self.transition_out())
        return torch.cat([*parts, self.output_bias()[:, None]], dim=1)

    @torch.no_grad()
    def fused(self) -> BERT4Rec:
        """An id-only model with identical intents: text folded into the embedding tables (for export; item rows
        come from `item_parts`)."""
        if not self.hybrid:
            return self
        plain = BERT4Rec(dataclasses.replace(self.cfg, text_dim=0, id_dropout=0.0),
                         text=self.content if self.cfg.content_dim else None)
        state = {k: v for k, v in self.state_dict().items() if not k.startswith(("text_", "new_"))}
        state["item_emb.weight"] = self.embed_items(torch.arange(self.cfg.n_indices, device=self.id_known.device))
        if self.out_emb is not None:
            state["out_emb.weight"] = self.output_weight()
        state["out_bias"] = self.output_bias()
        if self.cfg.transition_dim:  # new items' transition rows are zero, as the hybrid model scores them
            state["prev_emb.weight"] = self.prev_emb.weight * self.id_known[:, None]
            state["next_emb.weight"] = self.transition_out()
        plain.load_state_dict(state)
        return plain.to(self.item_emb.weight.device).eval()

    @torch.no_grad()
    def item_parts(self) -> ItemParts:
        """The parts every item's row is built from (`shared.scoring.item_rows`), as the model scores in eval mode:
        `item_rows(parts)` equals `item_vectors()`."""
        n, layout = self.cfg.n_indices, self.cfg.layout
        keep = self.id_known if self.hybrid else torch.ones(n, device=self.out_bias.device)
        base = self.item_emb.weight if self.out_emb is None else self.out_emb.weight
        parts = [base * keep[:, None]]
        if self.cfg.transition_dim:
            parts.append(self.next_emb.weight * keep[:, None])
        parts.append((self.out_bias * keep)[:, None])
        id_rows = torch.cat(parts, dim=1).float().cpu().numpy()
        if not self.hybrid:
            return ItemParts(layout, id_rows, np.zeros(n, dtype=np.uint8))
        new = self._new_mark(keep).squeeze(-1).cpu().numpy() > 0
        flags = (new * NEW_ITEM | (self.catalog_only.cpu().numpy() > 0) * UNSEEN).astype(np.uint8)
        text_weight = self.text_out or self.text_in
        weights = torch.cat([torch.cat([text_weight.weight.T, self.text_bias.weight.T], dim=1),
                             torch.cat([text_weight.bias, self.text_bias.bias])[None, :]])
        new_item = torch.cat([self._new_out(), (GATE_SCALE * self.new_bias)[None]])
        content_weight = float(1.0 + GATE_SCALE * self.new_content) if self.cfg.content_dim else 1.0
        head = TextHead(weights.float().cpu().numpy(), new_item.float().cpu().numpy(), content_weight)
        return ItemParts(layout, id_rows, flags, self.text.float().cpu().numpy(), head)
