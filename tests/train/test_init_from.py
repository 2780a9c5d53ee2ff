"""``rotary train`` with ``init_from``: continued training from a run's weights and tokenizer,
with the recipe's model keys over the run's config (a RoPE context-extension fine-tune)."""

import dataclasses

import pytest
import torch

from rotary import checkpoint as ckpt
from rotary.errors import RotaryError
from rotary.train.loop import train
from tests.train_support import make_recipe, write_corpus


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("init_from")
    corpus = write_corpus(root / "corpus")
    train(make_recipe(root / "base", corpus, max_steps=2, checkpoint_interval=2))
    return root, corpus


def test_continues_from_the_weights_with_rope_scaling(base_run):
    root, corpus = base_run
    cfg = make_recipe(root / "extended", corpus, model={"rope_scaling": "linear", "rope_scaling_factor": 2.0,
                                                         "rope_original_max_seq_len": 32, "max_seq_len": 64},
                      seq_len=64, max_steps=1, init_from=str(root / "base"), eval_interval=1, checkpoint_interval=1)
    result = train(cfg)
    assert result.step == 1
    base_cfg = ckpt.read_json(ckpt.resolve_checkpoint(root / "base", "best") / "config.json")["model"]
    new_cfg = ckpt.read_json(ckpt.resolve_checkpoint(root / "extended", "latest") / "config.json")["model"]
    assert new_cfg["rope_scaling"] == "linear" and new_cfg["max_seq_len"] == 64
    assert new_cfg["d_model"] == base_cfg["d_model"] and new_cfg["vocab_size"] == base_cfg["vocab_size"]
    assert "(init_from)" in (root / "extended" / "train.log").read_text()
    # the run's tokenizer, not a new one
    assert cfg.data.tokenizer.path.endswith("tokenizer")
    # one step from the base weights: close to them, not a fresh initialisation
    from safetensors.torch import load_file

    a = load_file(str(ckpt.resolve_checkpoint(root / "base", "best") / "model.safetensors"))
    b = load_file(str(ckpt.resolve_checkpoint(root / "extended", "latest") / "model.safetensors"))
    w = "backbone.layers.0.attn.qkv_proj.weight"
    assert (a[w] - b[w]).abs().max() < 0.05 and not torch.equal(a[w], b[w])


def test_another_task_or_shape_is_refused(base_run, tmp_path):
    root, corpus = base_run
    with pytest.raises(RotaryError, match="is a causal_lm run and this recipe trains masked_lm"):
        train(make_recipe(tmp_path / "mlm", corpus, task="masked_lm", init_from=str(root / "base")))
    assert not (tmp_path / "mlm").exists()
    with pytest.raises(RotaryError, match="change only keys that keep the shapes"):
        train(make_recipe(tmp_path / "wide", corpus, model={"d_model": 128}, init_from=str(root / "base")))
    assert not (tmp_path / "wide").exists()
    with pytest.raises(RotaryError, match="no checkpoint|not found|does not exist|no such"):
        train(make_recipe(tmp_path / "gone", corpus, init_from=str(tmp_path / "nowhere")))
    assert not (tmp_path / "gone").exists()


def test_every_way_of_starting_from_a_run_refuses_alike(base_run, tmp_path):
    """``rotary.load``, ``init_from`` and ``finetune --from`` open runs through one function
    (``rotary.run_source.open_run``): a transformers checkpoint is told to be converted, and a
    checkpoint without its tokenizer is named, by each of them in the same words."""
    import shutil

    import rotary
    from rotary.manifest import write_manifest
    from rotary.train.config import TrainConfig
    from rotary.train.finetune import _source

    root, corpus = base_run
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "llama"}')
    bare = tmp_path / "bare"
    shutil.copytree(ckpt.resolve_checkpoint(root / "base", "best"), bare)
    shutil.rmtree(bare / "tokenizer")
    write_manifest(bare)  # sealed without it: a checkpoint written by hand, say
    finetune_cfg = TrainConfig.from_dict({"task": "classification", "output_dir": str(tmp_path / "ft")})
    starts = {
        "load": lambda src: rotary.load(src, device="cpu", verify=False),
        "init_from": lambda src: train(make_recipe(tmp_path / "cont", corpus, init_from=str(src))),
        "finetune": lambda src: _source(dataclasses.replace(finetune_cfg, init_from=str(src))),
    }
    for name, start in starts.items():
        with pytest.raises(RotaryError, match=rf"{hf} is a transformers checkpoint \(llama\): convert it first"):
            start(hf)
        with pytest.raises(RotaryError, match=rf"{bare} has no tokenizer/: .* needs the tokenizer the model was "
                                              r"trained with"):
            start(bare)
        assert not (tmp_path / "cont").exists(), name
