"""Named recipes and `nanotrain recipes`: the original shapes at full scale, sizes at small/tiny."""

import json

import pytest

from nanotrain.cli import main
from nanotrain.errors import UserError
from nanotrain.recipes import RECIPES, SCALE_TRAIN, get_recipe

REQUIRED = {"haar-v5", "engram-v1", "baseline-v1", "engram-v2", "baseline", "engram-mtp", "haar-causal", "looplm"}


def test_all_recipes_exist_and_unknown_names_list_the_valid_ones():
    assert REQUIRED <= set(RECIPES)
    with pytest.raises(UserError) as err:
        get_recipe("engram-v9")
    assert "engram-v9" in str(err.value) and all(name in str(err.value) for name in REQUIRED)
    with pytest.raises(UserError, match="scale"):
        get_recipe("baseline").build("huge")


def test_full_scale_matches_the_seed_spec():
    model, train = get_recipe("engram-v1").build("full")
    assert (model.dim, model.n_layers, model.n_heads, model.n_kv_heads) == (1024, 20, 16, 4)
    assert (model.ffn_mult, model.vocab_size, model.max_seq_len, model.mhc_streams) == (3.0, 4096, 1024, 2)
    assert model.engram_layers == [0, 19] and model.engram_orders == [2, 3]
    assert (model.engram_heads, model.engram_d_mem, model.engram_table_size) == (4, 128, 10007)
    assert (train.lr, train.lion_lr, train.batch_size, train.seq_len) == (0.012, 1e-4, 2, 1024)
    assert (train.warmup_steps, train.total_steps) == (1500, 10000)
    model, train = get_recipe("baseline-v1").build("full")
    assert model.mtp_heads == 3 and model.mtp_weight == 0.2 and train.warmup_steps == 2000
    model, train = get_recipe("haar-v5").build("full")
    assert model.wavefield_ratio == 0.5 and model.wavefield_mode == "bidirectional"
    assert (model.wavefield_field_size, model.wavefield_haar_levels, train.warmup_steps) == (256, 6, 1500)
    v1, v2 = get_recipe("engram-v1"), get_recipe("engram-v2")
    assert v2.resume_from == "engram-v1" and v1.resume_from is None
    assert v2.build("full")[0] == v1.build("full")[0]
    assert (v2.build("full")[1].total_steps, v2.build("full")[1].warmup_steps) == (16000, 1500)
    baseline, _ = get_recipe("baseline").build("full")
    assert baseline.mtp_heads == 0 and baseline.engram_layers == [] and baseline.wavefield_ratio == 0


def test_scales_keep_the_architecture():
    for name in RECIPES:
        full, _ = get_recipe(name).build("full")
        for scale in ("small", "tiny"):
            cfg, train = get_recipe(name).build(scale)
            assert (cfg.mtp_heads, cfg.wavefield_mode, cfg.wavefield_ratio) == \
                (full.mtp_heads, full.wavefield_mode, full.wavefield_ratio)
            assert bool(cfg.engram_layers) == bool(full.engram_layers) and bool(cfg.loop_count) == bool(full.loop_count)
            assert train.seq_len <= cfg.max_seq_len
            assert cfg.engram_heads * len(cfg.engram_orders) * cfg.engram_d_mem == cfg.dim
    assert set(SCALE_TRAIN) == {"full", "small", "tiny"}


def test_cli_lists_recipes_with_counts_and_causality(capsys):
    assert main(["recipes", "--json", "--scale", "tiny"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(RECIPES)
    assert rows["haar-v5"]["causal"] is False and rows["haar-causal"]["causal"] is True
    assert 3e6 < rows["baseline"]["params"]["total"] < 10e6
    engram = rows["engram-v1"]["params"]
    assert engram["engram_tables"] > 0 and engram["total"] == engram["excl_tables"] + engram["engram_tables"]
    assert main(["recipes", "--scale", "small"]) == 0
    table = capsys.readouterr().out
    assert "engram-v2" in table and "NO" in table
    small = [line for line in table.splitlines() if line.startswith("baseline ")][0]
    assert 25 < float(small.split()[2].rstrip("M")) < 40  # ~30M
    with pytest.raises(SystemExit):
        main(["recipes", "--scale", "huge"])
