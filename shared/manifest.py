"""The bundle manifest, typed: what a bundle holds, how its item vectors are laid out, how to score with them.

`manifest.json` is written by the trainer's bundle builder alone (`services/trainer/bundle_builder.py`) and
read through `Manifest.from_dict`, which refuses any other format version with one clear error: a bundle
is read the way it was written, or not at all.

Format history: 1 — the score's constants were spread over the manifest and the torch module; 2 — every
column slice and scoring constant lives in `scoring` (`ScoringSpec`), item rows are rebuilt from their
parts (`item_id_parts.npy`, `item_flags.npy`, `text_head.npy`; `shared/scoring.py`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = 2


class ManifestError(ValueError):
    """A manifest of another format version, or one missing a field this format requires."""


@dataclass(frozen=True)
class Layout:
    """Column groups of an item row (and of an intent): model | content | transition | bias."""

    model: int  # the output item vector (the encoder's hidden size)
    content: int = 0  # the item's text embedding, scored by content affinity (hybrid bundles)
    transition: int = 0  # the item's factorized-transition vector (the intent holds the last item's query)

    @property
    def dim(self) -> int:
        return self.model + self.content + self.transition + 1

    @property
    def model_cols(self) -> slice:
        return slice(0, self.model)

    @property
    def content_cols(self) -> slice:
        return slice(self.model, self.model + self.content)

    @property
    def transition_cols(self) -> slice:
        return slice(self.model + self.content, self.model + self.content + self.transition)

    @property
    def bias_col(self) -> int:
        return self.dim - 1

    @property
    def id_width(self) -> int:
        """Width of an item's id part: its model, transition and bias columns (content comes from text alone)."""
        return self.model + self.transition + 1


@dataclass(frozen=True)
class PriorSpec:
    """The count-based sequence prior's weights (`shared/sequence_prior.py`)."""

    transition_weight: float
    repeat_bias: float
    window: int  # history items that count as seen: max_len - 1
    max_successors: int
    reach: int = 1  # pairs up to this many steps apart are counted, each 1 / steps (1: bundles before rules)
    anchors: int = 1  # newest history items whose successors vote, the k-th newest weighing 1 / k


@dataclass(frozen=True)
class ScoringSpec:
    """Everything `shared/scoring.py` needs besides the arrays."""

    layout: Layout
    prior: PriorSpec | None = None
    new_content_weight: float = 1.0  # content columns of a new item are its text times this
    exposure_boost: float = 0.0  # added to the bias of items nobody has interacted with (catalog-only, online)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["formula"] = ("intent · row[i] + transition_weight · Σ_k≤anchors (1/k) · log(1 + rule(k-th newest "
                          "history item → i)) + repeat_bias · [i among the last `window` history items]; "
                          "rule(a → i) = Σ over training pairs a … i at most `reach` steps apart of 1/steps")
        out["tie_break"] = "higher score first, then lower item index"
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ScoringSpec:
        prior = raw.get("prior")
        return cls(Layout(**raw["layout"]), PriorSpec(**prior) if prior else None,
                   float(raw.get("new_content_weight", 1.0)), float(raw.get("exposure_boost", 0.0)))


@dataclass(frozen=True)
class TextSpec:
    """How item text was built and embedded (hybrid bundles)."""

    model: str
    dim: int
    columns: list[str]
    name_column: str | None
    template: str = "name: <display name>; <column>: <value>; ..."


@dataclass(frozen=True)
class EncoderSpec:
    input: str
    output: str
    input_dtype: str = "int64"
    output_dtype: str = "float32"
    layout: str = "history oldest→newest, then mask_index; left-padded with pad_index"


@dataclass(frozen=True)
class Manifest:
    config: dict[str, Any]  # the training payload (TrainConfig.to_dict)
    model: dict[str, Any]  # the encoder's ModelConfig
    max_len: int
    pad_index: int
    mask_index: int
    n_items: int
    n_users: int
    metadata_schema: dict[str, str]
    scoring: ScoringSpec
    encoder: EncoderSpec
    text: TextSpec | None = None
    n_catalog_only_items: int = 0
    # The encoder answers at the [MASK] slot wherever it sits, so gap rows work (readers before it ignore the
    # field; bundles before it answer at the last slot only, and the ranker refuses gap queries on them).
    gap_filling: bool = False
    libraries: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (e.g. a synthetic bundle's recipe)
    bundle_version: str = ""  # set by BundleWriter.commit
    created_at: str = ""  # likewise
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # likewise: name -> sha256, bytes
    format_version: int = FORMAT_VERSION

    @property
    def dim(self) -> int:
        return self.scoring.layout.dim

    @property
    def hybrid(self) -> bool:
        return self.text is not None

    @property
    def top_k(self) -> int:
        return int(self.config["hparams"]["top_k"])

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["scoring"] = self.scoring.to_dict()
        out["dim"] = self.dim
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Manifest:
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise ManifestError(f"bundle format {version!r} is not supported (this seqrec reads format "
                                f"{FORMAT_VERSION}); retrain the bundle with this seqrec")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            values = {k: v for k, v in raw.items() if k in names}
            values["scoring"] = ScoringSpec.from_dict(raw["scoring"])
            values["encoder"] = EncoderSpec(**raw["encoder"])
            values["text"] = TextSpec(**raw["text"]) if raw.get("text") else None
            return cls(**values)
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"format {FORMAT_VERSION} manifest is incomplete or malformed: {exc}") from exc
