"""`nanoeval export` and `--hf`: every causal recipe's checkpoint loads in transformers with nanolab's logits and
greedy text; `score --hf` on an export reproduces `score --ckpt`; a foreign transformers model decodes through the
engine as transformers' own generate() decodes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nanoeval.cli import main as nanoeval
from nanoeval.engine import Engine, SamplingConfig
from nanoeval.hf import export, load_hf, unfused_state_dict
from nanoeval.load import load
from nanoeval.prompts import SEED_PROMPTS
from nanotrain.data.tokenizer import EOS_ID, PAD_ID
from nanotrain.recipes import RECIPES

transformers = pytest.importorskip("transformers")

CAUSAL_RECIPES = [name for name, r in RECIPES.items() if r.build("tiny")[0].wavefield_mode == "causal"
                  or not r.build("tiny")[0].wavefield_ratio]
TEXT = 'fn main() {\n    let s = "<eos> é 😀";\n}\n'


@pytest.fixture(scope="module")
def exported(tiny_checkpoint_factory, tmp_path_factory):
    """`exported(recipe) -> (checkpoint, export folder, stdout of the command)`, made once per recipe."""
    made = {}

    def make(name: str):
        if name not in made:
            ckpt = tiny_checkpoint_factory(name)
            out = tmp_path_factory.mktemp("hf") / name
            made[name] = (ckpt, out, export(ckpt, out))
        return made[name]

    return make


@pytest.mark.parametrize("name", CAUSAL_RECIPES)
def test_export_loads_in_transformers_with_nanolabs_logits_and_greedy_text(exported, name):
    ckpt, out, result = exported(name)
    native = name == "llama"
    assert result.remote_code is not native
    assert (out / "modeling_nanolab.py").exists() is not native
    config = json.loads((out / "config.json").read_text())
    assert ("auto_map" in config) is not native
    assert config["architectures"] == ["LlamaForCausalLM" if native else "NanolabForCausalLM"]

    tok = transformers.AutoTokenizer.from_pretrained(out, trust_remote_code=not native)
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token, tok.pad_token_id) == ("<eos>", EOS_ID, "<pad>", PAD_ID)
    loaded = load(ckpt, dtype=torch.float32)
    assert tok(TEXT)["input_ids"] == loaded.tokenizer.encode(TEXT, add_special_tokens=False).ids

    model = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=not native).eval()
    assert type(model).__name__ == ("LlamaForCausalLM" if native else "NanolabForCausalLM")
    assert type(model).__module__.startswith("transformers.models.llama" if native else "transformers_modules")
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        want, got = loaded.model(ids).logits, model(ids).logits
    assert want.shape == got.shape
    assert (want - got).abs().max().item() < 1e-4

    prompt = SEED_PROMPTS[0]
    engine = Engine(loaded.model, loaded.tokenizer)
    expected = engine.generate([prompt], SamplingConfig(max_new_tokens=32, temperature=0.0)).samples[0]
    prompt_ids = tok(prompt, return_tensors="pt").input_ids
    # the engine never picks <pad>: tell generate() the same
    generated = model.generate(prompt_ids, max_new_tokens=32, do_sample=False, suppress_tokens=[PAD_ID])
    new = generated[0, prompt_ids.shape[1]:].tolist()
    assert tok.decode(new, skip_special_tokens=True) == expected.text
    assert new[:len(expected.token_ids)] == expected.token_ids


def test_native_llama_weights_are_the_split_fused_weights(exported):
    ckpt, out, result = exported("llama")
    from safetensors.torch import load_file

    weights = load_file(out / "model.safetensors")
    gpt = load(ckpt, dtype=torch.float32).model
    separate = unfused_state_dict(gpt)
    q, k, v = (separate[f"blocks.1.attn.w{x}.weight"] for x in "qkv")
    assert torch.equal(torch.cat((q, k, v)), gpt.state_dict()["blocks.1.attn.wqkv.weight"])
    assert torch.equal(weights["model.layers.1.self_attn.k_proj.weight"], k)
    assert torch.equal(weights["model.layers.1.mlp.up_proj.weight"], separate["blocks.1.ffn.w_up.weight"])
    assert q.shape[0] == 2 * k.shape[0]  # 4 query heads over 2 KV heads
    assert result.max_abs_diff < 1e-4


def test_mtp_heads_are_dropped_and_said_so(exported, capsys, tiny_checkpoint_factory, tmp_path):
    ckpt = tiny_checkpoint_factory("engram-mtp")
    assert nanoeval(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert "dropped: 3 multi-token-prediction heads" in out and "NanolabForCausalLM" in out
    card = (tmp_path / "x" / "README.md").read_text()
    assert "3 multi-token-prediction heads" in card and "requires nanolab installed" in card
    assert "`engram-mtp`" in card and f"{4 * 2 * 64:,}" in card  # tokens seen: 4 steps x 2 x 64
    config = json.loads((tmp_path / "x" / "config.json").read_text())
    assert config["nanolab_model"]["mtp_heads"] == 0 and config["nanolab"]["dropped_mtp_heads"] == 3


def test_card_reports_the_checkpoints_score_report(tiny_checkpoint_factory, fixture_dataset, tmp_path, capsys):
    ckpt = tiny_checkpoint_factory("llama")
    report = tmp_path / "run" / "score.json"
    assert nanoeval(["score", "--ckpt", str(ckpt), "--data", str(fixture_dataset), "--heldout-tokens", "256",
                     "--max-new-tokens", "4", "--samples-per-prompt", "1", "--out", str(report)]) == 0
    heldout = json.loads(report.read_text())["heldout"]
    # the card finds <ckpt>/score.json: copy the report there (a checkpoint of the session fixture stays as it is)
    copy = tmp_path / "ckpt"
    import shutil

    shutil.copytree(ckpt, copy)
    shutil.copyfile(report, copy / "score.json")
    assert nanoeval(["export", "--ckpt", str(copy), "--out", str(tmp_path / "hf"), "--no-verify"]) == 0
    card = (tmp_path / "hf" / "README.md").read_text()
    assert f"CE {heldout['ce']:.4f} nats/token" in card and f"{heldout['bpb']:.4f} bits/byte" in card
    assert str(fixture_dataset) in card
    capsys.readouterr()


def test_export_refuses_a_noncausal_model_and_a_full_folder(tiny_checkpoint_factory, tmp_path, capsys):
    haar = tiny_checkpoint_factory("haar-v5")
    assert nanoeval(["export", "--ckpt", str(haar), "--out", str(tmp_path / "a")]) == 2
    assert "--inference-mode bypass" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("mine")
    assert nanoeval(["export", "--ckpt", str(tiny_checkpoint_factory("llama")), "--out", str(tmp_path / "b")]) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "b" / "keep.txt").read_text() == "mine"


def _score(capsys, tmp_path, source: list[str], data: Path, tag: str) -> dict:
    out = tmp_path / f"{tag}.json"
    code = nanoeval(["score", *source, "--data", str(data), "--heldout-tokens", "512", "--max-new-tokens", "24",
                     "--prompts", "seed", "--temperature", "0", "--samples-per-prompt", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", ["llama", "engram-v1"])
def test_score_hf_on_an_export_equals_score_ckpt(exported, fixture_dataset, tmp_path, capsys, name):
    ckpt, out, _ = exported(name)
    a = _score(capsys, tmp_path, ["--ckpt", str(ckpt)], fixture_dataset, "ckpt")
    b = _score(capsys, tmp_path, ["--hf", str(out)], fixture_dataset, "hf")
    assert a["heldout"]["n_tokens"] == b["heldout"]["n_tokens"] > 0
    assert abs(a["heldout"]["ce"] - b["heldout"]["ce"]) < 1e-4
    assert [s["text"] for s in a["samples"]] == [s["text"] for s in b["samples"]]
    assert b["checkpoint"]["path"] == str(out) and b["checkpoint"]["recipe"] == name
    capsys.readouterr()
    texts = []
    for source in (["--ckpt", str(ckpt)], ["--hf", str(out)]):
        assert nanoeval(["generate", *source, "--prompt", "fn main() {\n", "--max-new-tokens", "12",
                         "--temperature", "0"]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and texts[0].startswith("fn main() {\n")


# -------------------------------------------------------------------------------- a model nanolab did not make

@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """A random tiny LlamaForCausalLM with its own byte-level BPE (eos "</s>" at id 2, no pad token), saved as a
    transformers folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("foreign")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([p * 3 for p in SEED_PROMPTS], trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", bos_token="<s>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=96, eos_token_id=2, bos_token_id=1,
                                      initializer_range=0.5)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def test_engine_decodes_a_foreign_model_as_its_own_generate(foreign):
    loaded = load_hf(foreign)
    assert (loaded.eos_id, loaded.pad_id) == (2, None)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(foreign).eval()
    tok = transformers.AutoTokenizer.from_pretrained(foreign)
    prompts = ["fn main() {\n", "", SEED_PROMPTS[3], "let"]  # different lengths decode as one batch
    engine = Engine(loaded.model, loaded.tokenizer, eos_id=loaded.eos_id, pad_id=loaded.pad_id)
    gen = engine.generate(prompts, SamplingConfig(max_new_tokens=24, temperature=0.0))
    for prompt, sample in zip(prompts, gen.samples):
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids if prompt else torch.tensor([[2]])
        out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                                pad_token_id=2)
        new = out[0, ids.shape[1]:].tolist()
        want = new[:new.index(2)] if 2 in new else new
        assert sample.token_ids == want, prompt
        assert sample.finish == ("eos" if 2 in new else "length")


def test_score_hf_reencodes_heldout_text_for_another_tokenizer(foreign, fixture_dataset, tmp_path, capsys):
    report = _score(capsys, tmp_path, ["--hf", str(foreign)], fixture_dataset, "foreign")
    h = report["heldout"]
    assert h["n_tokens"] > 0 and 0 < h["ce"] < 20 and h["bpb"] > 0
    assert report["checkpoint"]["recipe"] == "hf:llama"
    assert len(report["samples"]) == len(SEED_PROMPTS)


def test_hf_flag_errors_are_one_line(tmp_path, capsys):
    assert nanoeval(["score", "--hf", str(tmp_path), "--heldout-tokens", "0"]) == 2
    assert "not a transformers model folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        nanoeval(["generate", "--hf", str(tmp_path), "--ckpt", str(tmp_path), "--prompt", "x"])
