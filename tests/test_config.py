"""Configuration defaults, presets and validation messages."""

import dataclasses

import pytest

from seqrec.shared.config import (
    PRESETS,
    ConfigError,
    DataConfig,
    Hyperparameters,
    TrainConfig,
    build_hparams,
    validate_data_config,
)


def test_spec_defaults():
    hp = Hyperparameters()
    assert (hp.max_len, hp.sampling, hp.mask_ratio, hp.hidden_size, hp.depth, hp.heads) == \
        (50, "sliding_window", 0.15, 64, 2, 4)
    assert (hp.batch_size, hp.epochs, hp.lr, hp.dropout, hp.weight_tying, hp.grad_clip) == \
        (128, 10, 0.001, 0.1, False, 1.0)
    assert (hp.use_attention_mask, hp.negative_samples, hp.top_k) == (True, 100, 10)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_apply_and_validate(name):
    hp = build_hparams(name)
    for key, value in PRESETS[name].items():
        assert getattr(hp, key) == value


def test_override_beats_preset():
    assert build_hparams("music_playlist", epochs=3).epochs == 3
    assert build_hparams("music_playlist", epochs=None).epochs == 25


def test_hidden_not_divisible_by_heads():
    with pytest.raises(ConfigError, match=r"hidden_size: 64 is not divisible by heads=5"):
        build_hparams(heads=5)


@pytest.mark.parametrize("field,value,pattern", [
    ("mask_ratio", 0.0, "mask_ratio"), ("mask_ratio", 1.0, "mask_ratio"), ("dropout", 1.0, "dropout"),
    ("lr", 0.0, "lr"), ("max_len", 1, "max_len"), ("batch_size", 0, "batch_size"),
    ("sampling", "random", "sampling"), ("negative_samples", -1, "negative_samples"),
    ("grad_clip", -1.0, "grad_clip"), ("epochs", 0, "epochs"), ("weight_tying", "yes", "weight_tying"),
    ("new_item_exposure", -0.5, "new_item_exposure"), ("new_item_exposure", 1.0, "new_item_exposure"),
])
def test_invalid_values_name_the_field(field, value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_hparams(**{field: value})


def test_unknown_preset_and_field():
    with pytest.raises(ConfigError, match="preset"):
        build_hparams("nope")
    with pytest.raises(ConfigError, match="not a hyperparameter"):
        build_hparams(hiddn_size=3)


def test_data_config_validation():
    with pytest.raises(ConfigError, match="three different columns"):
        validate_data_config(DataConfig(data="x.csv", user_col="a", item_col="a", time_col="t"))
    with pytest.raises(ConfigError, match="meta_cols"):
        validate_data_config(DataConfig(data="x.csv", meta_cols=("user_id",)))


def test_config_round_trip():
    cfg = TrainConfig(data=DataConfig(data="x.csv", meta_cols=("title",)), hparams=build_hparams(epochs=3))
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert dataclasses.asdict(again.hparams)["epochs"] == 3
