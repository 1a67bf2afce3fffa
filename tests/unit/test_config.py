"""Config round trips and refusal of unknown keys."""

import json

import pytest

from nanotrain.config import ModelConfig, TrainConfig, dumps


def test_model_config_json_round_trip():
    cfg = ModelConfig(dim=64, n_layers=3, engram_layers=[0, 2], mtp_heads=3)
    back = ModelConfig.from_dict(json.loads(dumps(cfg.to_dict())))
    assert back == cfg


def test_train_config_json_round_trip_keeps_tuple():
    cfg = TrainConfig(lion_betas=(0.8, 0.95), total_steps=123)
    back = TrainConfig.from_dict(json.loads(dumps(cfg.to_dict())))
    assert back == cfg
    assert isinstance(back.lion_betas, tuple)


def test_unknown_key_is_refused():
    with pytest.raises(ValueError, match="unknown field"):
        ModelConfig.from_dict({"dim": 64, "dimm": 3})
