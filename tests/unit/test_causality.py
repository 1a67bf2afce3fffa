"""The future-token leak detector on real tiny checkpoints: flags haar-v5 at its first wavefield layer, passes
the causal recipes, and the generation (bypass) path of haar-v5."""

from __future__ import annotations

import json

import pytest

import nanoeval
from nanoeval.causality import check_causality
from nanoeval.cli import main
from nanotrain.errors import UserError


@pytest.mark.parametrize("recipe", ["engram-v1", "baseline-v1", "haar-causal", "looplm"])
def test_causal_recipes_pass(recipe, tiny_checkpoint_factory):
    loaded = nanoeval.load(tiny_checkpoint_factory(recipe))
    result = check_causality(loaded.model, seq_len=64)
    assert result.causal, result
    assert result.first_leaking_layer is None
    assert result.max_leak <= result.tolerance
    assert len(result.layers) >= loaded.model_cfg.n_layers  # every block (and every loop call) was hooked


def test_haar_v5_is_flagged_at_its_first_wavefield_layer(tiny_checkpoint_factory):
    loaded = nanoeval.load(tiny_checkpoint_factory("haar-v5"))
    result = check_causality(loaded.model, seq_len=64)
    first = loaded.model.noncausal_layers()[0]
    assert not result.causal
    assert result.max_leak > 100 * result.tolerance
    assert result.first_leaking_layer == f"blocks.{first}"
    # blocks before the first wavefield layer are untouched by the future
    assert all(layer.leak == 0.0 for layer in result.layers[:first])
    assert result.declared_noncausal_layers == loaded.model.noncausal_layers()


def test_haar_v5_generation_path_is_causal(tiny_checkpoint_factory):
    loaded = nanoeval.load(tiny_checkpoint_factory("haar-v5"))
    result = check_causality(loaded.model, seq_len=64, inference_mode="bypass")
    assert result.causal and result.inference_mode == "bypass"


def test_bad_settings_are_user_errors(tiny_checkpoint_factory):
    loaded = nanoeval.load(tiny_checkpoint_factory("engram-v1"))
    for kwargs in ({"seq_len": loaded.model_cfg.max_seq_len + 1}, {"seq_len": 1}, {"trials": 0},
                   {"inference_mode": "train"}, {"inference_mode": "ignore"}):
        with pytest.raises(UserError):
            check_causality(loaded.model, **kwargs)


def test_cli_exit_status_and_json(tiny_checkpoint_factory, capsys, tmp_path):
    out = tmp_path / "haar.json"
    rc = main(["causality", "--ckpt", str(tiny_checkpoint_factory("haar-v5")), "--seq-len", "64", "--json",
               "--out", str(out)])
    printed = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert printed["causal"] is False and printed["first_leaking_layer"] == "blocks.1"
    assert json.loads(out.read_text()) == printed
    rc = main(["causality", "--ckpt", str(tiny_checkpoint_factory("engram-v1")), "--seq-len", "64"])
    assert rc == 0
    assert "causal" in capsys.readouterr().out


def test_cli_inference_mode_is_the_engines_vocabulary(tiny_checkpoint_factory, capsys):
    """refuse (the default) tests every layer, bypass skips the non-causal ones; `train` is the old spelling of
    refuse and says so."""
    haar = str(tiny_checkpoint_factory("haar-v5"))
    assert main(["causality", "--ckpt", haar, "--seq-len", "64", "--inference-mode", "bypass", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["inference_mode"] == "bypass"
    for mode in ("refuse", "train"):
        assert main(["causality", "--ckpt", haar, "--seq-len", "64", "--inference-mode", mode, "--json"]) == 1
        out, err = capsys.readouterr()
        assert json.loads(out)["inference_mode"] == "refuse"
        assert ("old spelling of refuse" in err) is (mode == "train")
