"""ELECTRA pretraining (task: electra): the loss against a hand computation, no gradient from
the discriminator into the generator, exact resume through the loop, and fine-tuning from the
discriminator."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rotary.labels import IGNORE_INDEX
from rotary.model.config import ModelConfig
from rotary.model.electra import ElectraPretrainer, generator_config
from tests.train_support import make_recipe, train_interrupted_at, train_losses

VOCAB, PAD, MASK = 40, 0, 1


def tiny(disc_weight: float = 50.0) -> ElectraPretrainer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, max_seq_len=16, n_layer=2, n_head=4, d_model=32, d_ff=64, causal=False,
                      pad_token_id=PAD, type_vocab_size=2)
    return ElectraPretrainer(cfg, disc_weight=disc_weight)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    original = torch.randint(2, VOCAB, (3, 12), generator=g)
    original[2, 9:] = PAD  # a padded row: its pads are no tokens to judge
    masked = torch.rand(3, 12, generator=g) < 0.3
    masked[2, 9:] = False
    labels = torch.where(masked, original, torch.full_like(original, IGNORE_INDEX))
    return original.masked_fill(masked, MASK), labels


def test_the_generator_is_a_quarter_of_the_width_with_heads_of_the_same_size():
    cfg = ModelConfig(vocab_size=VOCAB, max_seq_len=16, n_layer=4, n_head=8, d_model=256, d_ff=1024, causal=False)
    gen = generator_config(cfg, 0.25)
    assert (gen.d_model, gen.n_head, gen.d_ff, gen.n_layer) == (64, 2, 256, 4)
    assert gen.d_model // gen.n_head == cfg.d_model // cfg.n_head


def test_the_loss_is_the_generators_mlm_loss_plus_weighted_replaced_token_bce_by_hand():
    model = tiny().eval()  # no dropout: the two passes below see the same networks
    inputs, labels = batch()
    torch.manual_seed(5)
    loss = model(inputs, labels=labels)
    torch.manual_seed(5)  # the generator's samples come from the same draws
    with torch.no_grad():
        gen_logits = model.generator(inputs)  # (B, T, V)
        keep = labels != IGNORE_INDEX
        gen_loss = F.cross_entropy(gen_logits[keep], labels[keep])
        sampled = torch.multinomial(gen_logits[keep].softmax(-1), 1).squeeze(-1)
        corrupted = inputs.clone()
        corrupted[keep] = sampled
        original = torch.where(keep, labels, inputs)
        target = (corrupted != original).float()
        real = inputs != PAD
        d = model.replaced_logits(corrupted)
        disc = F.binary_cross_entropy_with_logits(d[real], target[real])
    assert target[~keep].sum() == 0 and 0 < target[keep].sum() <= keep.sum()
    assert float(loss.detach()) == pytest.approx(float(gen_loss + 50.0 * disc), rel=1e-5)
    torch.manual_seed(5)
    stats = model(inputs, labels=labels, return_stats=True)
    assert stats[1] == keep.sum() and stats[4] == real.sum() and float(stats[6]) == float(target[real].sum())
    assert float(stats[0] / stats[1]) == pytest.approx(float(gen_loss), rel=1e-5)
    assert float(stats[3] / stats[4]) == pytest.approx(float(disc), rel=1e-5)



def test_eval_stats_count_correct_generator_and_discriminator_predictions_by_hand():
    # stats[2] (generator top-1 hits) and stats[5] (discriminator right about replaced/original)
    # are what the eval reports as accuracy and disc_accuracy
    model = tiny().eval()
    inputs, labels = batch()
    torch.manual_seed(5)
    stats = model(inputs, labels=labels, return_stats=True)
    torch.manual_seed(5)
    with torch.no_grad():
        keep = labels != IGNORE_INDEX
        gen_logits = model.generator(inputs)[keep]
        sampled = torch.multinomial(gen_logits.softmax(-1), 1).squeeze(-1)
        corrupted = inputs.clone()
        corrupted[keep] = sampled
        target = corrupted != torch.where(keep, labels, inputs)
        real = inputs != PAD
        d = model.replaced_logits(corrupted)
    assert int(stats[2]) == int((gen_logits.argmax(-1) == labels[keep]).sum())
    assert int(stats[5]) == int(((d[real] > 0) == target[real]).sum())
    assert 0 < int(stats[5]) < int(real.sum())  # an untrained discriminator: neither all right nor all wrong


def test_attention_mask_alone_keeps_padding_out_of_the_discriminator_loss():
    # without a pad_token_id the attention mask is the only sign of padding: padded positions
    # are no tokens to judge, in the loss and in the counts
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, max_seq_len=16, n_layer=1, n_head=4, d_model=32, d_ff=64, causal=False,
                      pad_token_id=None, type_vocab_size=2)
    model = ElectraPretrainer(cfg).eval()
    inputs, labels = batch()
    mask = (torch.arange(12) < torch.tensor([12, 12, 9])[:, None]).long()
    torch.manual_seed(5)
    stats = model(inputs, attention_mask=mask, labels=labels, return_stats=True)
    assert int(stats[4]) == int(mask.sum()) == 33

def test_no_gradient_reaches_the_generator_through_its_samples():
    inputs, labels = batch()
    grads = []
    for weight in (50.0, 0.0):  # with and without the discriminator's term
        model = tiny(disc_weight=weight)
        torch.manual_seed(5)
        model(inputs, labels=labels).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    gen = [n for n in grads[1] if n.startswith("generator.")]
    assert gen and all(torch.equal(grads[0][n], grads[1][n]) for n in gen)  # the same: nothing leaked
    assert any(grads[0][n].abs().sum() > 0 for n in grads[0] if n.startswith("backbone."))
    assert not [n for n in grads[1] if n.startswith("backbone.") and grads[1][n].abs().sum() > 0]


@pytest.fixture(scope="module")
def electra_run(data_char_dir, tmp_path_factory):
    from rotary.train.loop import train

    cfg = electra_recipe(tmp_path_factory.mktemp("electra") / "run", data_char_dir, max_steps=4)
    train(cfg)
    return cfg


def electra_recipe(run: Path, tokenizer: Path, **overrides):
    return make_recipe(run, task="electra", model={"preset": "tiny", "max_seq_len": 32, "causal": False,
                                                   "type_vocab_size": 2},
                       data={"corpus": "peoples-daily", "max_documents": 30, "tokenizer": {"path": str(tokenizer)}},
                       eval_interval=2, checkpoint_interval=2, **overrides)


def test_an_electra_run_trains_evaluates_and_resumes_exactly(electra_run, data_char_dir, tmp_path, monkeypatch):
    import json

    from rotary.train.loop import train

    evals = [json.loads(x) for x in (electra_run.run_dir / "metrics.jsonl").read_text().splitlines()
             if '"eval"' in x]
    assert {"loss", "accuracy", "disc_loss", "disc_accuracy", "replaced"} <= set(evals[-1])
    assert 0 < evals[-1]["replaced"] < 0.3  # about the masked share, less the samples that hit the original
    part = electra_recipe(tmp_path / "part", data_char_dir, max_steps=4)
    assert train_interrupted_at(part, 2, monkeypatch).step == 2
    train(part, resume=True)
    assert train_losses(part.run_dir) == train_losses(electra_run.run_dir)  # the generator's draws resume too


def test_a_fine_tune_from_electra_takes_the_discriminator(electra_run, tmp_path):
    from safetensors.torch import load_file

    from rotary.infer.pretrained import load
    from rotary.model import SequenceClassifier
    from rotary.train.finetune import load_backbone

    pre = load(electra_run.run_dir, device="cpu")
    assert isinstance(pre.model, ElectraPretrainer) and pre.task == "electra"
    clf = SequenceClassifier(pre.model.config, 2)
    load_backbone(clf, electra_run.run_dir / "best" / "model.safetensors")
    weights = load_file(str(electra_run.run_dir / "best" / "model.safetensors"))
    for name, tensor in clf.backbone.state_dict().items():
        assert torch.equal(tensor, weights[f"backbone.{name}"])
    assert clf.backbone.embed_tokens.weight.shape[1] != pre.model.generator.config.d_model


def test_flops_count_both_networks_and_the_generators_projection_on_masked_rows_only():
    """The MFU numerator: every non-embedding weight of both networks on every position, the
    generator's tied output projection only on the masked share, attention in both (counting the
    generator's embeddings as weights, and its projection on every position, claimed > 100%)."""
    model = tiny()
    gen = model.generator.config
    weights = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name)
    T, share = 12, 0.15
    attention = 12 * T * (model.config.n_layer * model.config.d_model + gen.n_layer * gen.d_model)
    expected = 6 * (weights + share * VOCAB * gen.d_model) + attention
    assert model.flops_per_token(T, predicted_share=share) == pytest.approx(expected)
    assert model.flops_per_token(T, training=False, predicted_share=share) == pytest.approx(expected / 3)


def test_rotary_eval_refuses_an_electra_run_with_the_verb_to_use(electra_run, capsys):
    """rotary eval scores a run through its task's row; electra's has no scorer (its
    discriminator is scored once fine-tuned), so the refusal is one line naming the verb."""
    from rotary.cli import main
    from rotary.tasks import TASKS

    assert {n for n, t in TASKS.items() if t.score is not None} == {"causal_lm", "masked_lm", "seq2seq",
                                                                      "classification", "sft"}
    assert main(["eval", str(electra_run.run_dir), "--corpus", "peoples-daily"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not score an electra run" in err[0] and "rotary finetune" in err[0]
    assert not (electra_run.run_dir / "eval.json").exists()
