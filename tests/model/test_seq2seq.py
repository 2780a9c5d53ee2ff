"""The encoder-decoder: transformers' MarianMTModel as the oracle (logits, loss, beam search on
converted weights, both ways), the cache and beam-search properties, and the RoPE twin's
cross-attention carrying no positions."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")
import transformers as tf  # noqa: E402

from rotary.errors import RotaryError  # noqa: E402
from rotary.hf import config_from_hf, config_to_hf, from_hf, to_hf  # noqa: E402
from rotary.infer.decoding import beam_core, greedy_core, translate_ids  # noqa: E402
from rotary.model import ModelConfig, Seq2SeqLM  # noqa: E402

V, PAD, EOS = 24, 1, 0


def marian_config(**kw) -> tf.MarianConfig:
    base = dict(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=3, encoder_ffn_dim=64, decoder_ffn_dim=64,
                encoder_attention_heads=4, decoder_attention_heads=4, max_position_embeddings=64, pad_token_id=PAD,
                decoder_start_token_id=PAD, eos_token_id=EOS, forced_eos_token_id=EOS, activation_function="relu",
                scale_embedding=True, dropout=0.0)
    base.update(kw)
    return tf.MarianConfig(**base)


def padded_sources(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded sources (Marian's convention) of lengths 1..8."""
    g = torch.Generator().manual_seed(seed)
    lengths = [8, 5, 1, 3, 7, 2][:n]
    src = torch.full((n, 8), PAD)
    for i, n_tok in enumerate(lengths):
        src[i, :n_tok] = torch.randint(2, V, (n_tok,), generator=g)
    return src, (src != PAD).long()


def reversal_batch(g: torch.Generator, n: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    src = torch.full((n, 8), PAD)
    labels = torch.full((n, 9), -100)
    for i in range(n):
        n_tok = int(torch.randint(1, 8, (1,), generator=g))
        s = torch.randint(2, V, (n_tok,), generator=g)
        src[i, :n_tok] = s
        labels[i, :n_tok], labels[i, n_tok] = s.flip(0), EOS
    return src, (src != PAD).long(), labels


@pytest.fixture(scope="module")
def trained_marian():
    """A Marian briefly trained to reverse its source, so that hypotheses end at different
    lengths and beam search has real choices to make (a random one repeats one token)."""
    torch.manual_seed(0)
    hf = tf.MarianMTModel(marian_config(decoder_layers=2))
    opt = torch.optim.Adam(hf.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(120):
        src, mask, labels = reversal_batch(g)
        loss = hf(input_ids=src, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return hf.eval()


@pytest.mark.parametrize("kw", [dict(), dict(activation_function="gelu", scale_embedding=False, decoder_layers=1),
                                dict(activation_function="swish")])
def test_marian_logits_and_loss_equal_transformers(kw):
    torch.manual_seed(1)
    hf = tf.MarianMTModel(marian_config(**kw)).eval()
    with torch.no_grad():
        hf.final_logits_bias.normal_()
    model = from_hf(hf)
    assert isinstance(model, Seq2SeqLM) and model.config.sinusoidal_layout == "halves"
    src, mask = padded_sources()
    labels = torch.randint(2, V, (4, 6))
    labels[1, 4:] = -100
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=mask, labels=labels)
        logits = model(src, mask, decoder_input_ids=model.shift_right(labels))
        loss = model(src, mask, labels=labels)
    torch.testing.assert_close(logits, ref.logits, rtol=0, atol=1e-4)
    assert abs(float(loss) - float(ref.loss)) < 1e-5


def test_untied_marian_is_refused():
    with pytest.raises(RotaryError, match="tie_word_embeddings must be true"):
        from_hf(tf.MarianMTModel(marian_config(tie_word_embeddings=False)))


def test_rotary_to_marian_and_back():
    cfg = ModelConfig(vocab_size=V, max_seq_len=64, n_layer=2, n_decoder_layer=1, n_head=4, d_model=32, d_ff=64,
                      mlp="relu", norm="layernorm", pre_norm=False, bias=True, position="sinusoidal",
                      sinusoidal_layout="halves", embed_norm=False, scale_embeddings=True, logits_bias=True,
                      pad_token_id=PAD, initializer_range=0.1)
    torch.manual_seed(2)
    model = Seq2SeqLM(cfg).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_()
    hf = to_hf(model)
    assert type(hf).__name__ == "MarianMTModel"
    src, mask = padded_sources()
    dec = torch.randint(2, V, (4, 5))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=src, attention_mask=mask, decoder_input_ids=dec).logits,
                                   model(src, mask, decoder_input_ids=dec), rtol=0, atol=1e-4)
    back = config_from_hf(config_to_hf(cfg, "marian"))
    assert back.n_decoder_layer == 1 and back.scale_embeddings and back.decoder_start_token_id == PAD
    torch.testing.assert_close(from_hf(hf)(src, mask, decoder_input_ids=dec), model(src, mask, decoder_input_ids=dec),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("change,match", [(dict(position="rope"), "position=rope"),
                                          (dict(n_kv_head=2), "grouped K/V"),
                                          (dict(pre_norm=True), "post-norm"),
                                          (dict(embed_norm=True), "embedding norm"),
                                          (dict(tie_embeddings=False), "output embeddings"),
                                          (dict(decoder_vocab_size=V + 3, share_embeddings=False),
                                           "vocabulary per side")])
def test_what_marian_cannot_express_is_refused(change, match):
    base = dict(vocab_size=V, max_seq_len=32, n_layer=1, n_head=4, d_model=32, mlp="relu", norm="layernorm",
                pre_norm=False, bias=True, position="sinusoidal", sinusoidal_layout="halves", embed_norm=False,
                pad_token_id=PAD)
    with pytest.raises(RotaryError, match=match):
        to_hf(Seq2SeqLM(ModelConfig(**{**base, **change})))


@pytest.mark.parametrize("num_beams,length_penalty", [(1, 1.0), (4, 1.0), (4, 0.6), (3, 2.0), (5, 0.0)])
def test_beam_search_equals_marian_generate(trained_marian, num_beams, length_penalty):
    model = from_hf(trained_marian)
    src, mask = padded_sources(6, seed=3)
    with torch.no_grad():
        out = trained_marian.generate(input_ids=src, attention_mask=mask, num_beams=num_beams,
                                      length_penalty=length_penalty, max_new_tokens=10, do_sample=False)
    ref = [row[1:] for row in out.tolist()]
    ref = [r[: r.index(EOS) + 1] if EOS in r else r for r in ref]
    got = translate_ids(model, src, mask, num_beams=num_beams, length_penalty=length_penalty, max_new_tokens=10,
                        eos_id=EOS)
    assert got.tokens == ref
    assert len({len(t) for t in got.tokens}) > 2  # hypotheses of several lengths: a real test


def test_beam_of_one_equals_greedy(trained_marian):
    model = from_hf(trained_marian)
    src, mask = padded_sources(6, seed=4)
    greedy = translate_ids(model, src, mask, num_beams=1, max_new_tokens=10, eos_id=EOS)
    # the beam algorithm itself with one beam and no length normalisation is greedy too
    memory = model.encode(src, mask)
    cache = model.new_cache(mask, 6, 11)

    def step(tokens, keep):
        if keep is not None:
            cache.reorder(keep)
        return model.decode(tokens, memory, cache=cache, last_only=True)[:, -1]

    with torch.no_grad():
        beam = beam_core(step, 6, 1, PAD, EOS, 10, length_penalty=0.0, pad_id=PAD)
    assert beam.tokens == greedy.tokens
    for a, b in zip(beam.scores, greedy.scores):
        assert abs(a - b) < 1e-4


def markov_step(table: torch.Tensor):
    """A 'model' whose next-token log-probabilities depend on the previous token only."""
    def step(tokens, keep):
        return table[tokens[:, -1]]
    return step


def test_beam_search_beats_greedy_on_a_trap():
    """From the start, token 2 is likeliest (0.5 vs 0.4), but every continuation after it is poor
    (0.25 each), while token 3 is followed by EOS with certainty: greedy scores 0.5 * 0.25, beam
    search finds 0.4 * 1.0."""
    n = 6
    p = torch.full((n, n), 1e-9)
    p[1, 2], p[1, 3], p[1, 4] = 0.5, 0.4, 0.1  # 1 = start
    p[2, 0], p[2, 4], p[2, 5], p[2, 3] = 0.25, 0.25, 0.25, 0.25
    p[3, 0] = 1.0
    p[4, 0], p[5, 0] = 1.0, 1.0
    table = p.log()
    greedy = greedy_core(markov_step(table), 1, 1, 0, 5)
    beam = beam_core(markov_step(table), 1, 2, 1, 0, 5, length_penalty=0.0)
    assert greedy.tokens == [[2, 0]] and beam.tokens == [[3, 0]]
    assert math.isclose(beam.scores[0], math.log(0.4), rel_tol=1e-5)
    assert beam.scores[0] > greedy.scores[0] + 0.5


@pytest.mark.parametrize("position,decoder_vocab", [("rope", None), ("sinusoidal", None), ("learned", None),
                                                    ("none", None), ("rope", V + 13)])
def test_cached_decoding_equals_full_forwards(position, decoder_vocab):
    torch.manual_seed(5)
    cfg = ModelConfig(vocab_size=V, max_seq_len=32, n_layer=2, n_decoder_layer=2, n_head=4, n_kv_head=2, d_model=32,
                      position=position, pad_token_id=PAD, initializer_range=0.1, decoder_vocab_size=decoder_vocab,
                      share_embeddings=decoder_vocab is None)
    model = Seq2SeqLM(cfg).double().eval()
    src, mask = padded_sources()
    dec = torch.randint(2, cfg.target_vocab_size, (4, 9))
    calls = []
    hooks = [layer.cross_attn.kv_proj.register_forward_hook(lambda *a: calls.append(1))
             for layer in model.decoder.layers]
    with torch.no_grad():
        full = model(src, mask, decoder_input_ids=dec)
        calls.clear()
        memory = model.encode(src, mask)
        cache = model.new_cache(mask, 4, 9)
        parts = [model.decode(dec[:, :3], memory, cache=cache)]
        parts += [model.decode(dec[:, t:t + 1], memory, cache=cache) for t in range(3, 9)]
    for h in hooks:
        h.remove()
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=0, atol=1e-10)
    assert full.shape[-1] == cfg.target_vocab_size  # logits over the target side's vocabulary
    assert len(calls) == cfg.decoder_layers  # cross-attention keys/values once per source


def test_greedy_with_the_cache_equals_repeated_full_forwards():
    torch.manual_seed(6)
    cfg = ModelConfig(vocab_size=V, max_seq_len=32, n_layer=1, n_head=4, d_model=32, pad_token_id=PAD,
                      initializer_range=0.3)
    model = Seq2SeqLM(cfg).eval()
    src, mask = padded_sources()
    got = translate_ids(model, src, mask, max_new_tokens=8, eos_id=EOS, force_eos=False)
    for b in range(4):
        seq = [PAD]
        with torch.no_grad():
            for _ in range(8):
                alone = src[b:b + 1, : int(mask[b].sum())]  # the source without its padding
                nxt = int(model(alone, decoder_input_ids=torch.tensor([seq]))[0, -1].argmax())
                seq.append(nxt)
                if nxt == EOS:
                    break
        assert got.tokens[b] == seq[1:]


def test_rope_twin_cross_attention_has_no_positions():
    """Self-attention RoPE is relative and cross-attention unrotated, so shifting every decoder
    position by a constant changes nothing; rotating cross-attention would."""
    torch.manual_seed(7)
    cfg = ModelConfig(vocab_size=V, max_seq_len=32, n_layer=2, n_head=4, d_model=32, position="rope",
                      pad_token_id=PAD, initializer_range=0.1)
    model = Seq2SeqLM(cfg).double().eval()
    src, mask = padded_sources()
    dec = torch.randint(2, V, (4, 6))
    with torch.no_grad():
        memory = model.encode(src, mask)
        a = model.decoder(dec, memory=memory, memory_mask=mask)
        b = model.decoder(dec, position_ids=torch.arange(6)[None] + 50, memory=memory, memory_mask=mask)
        c = model.decoder(dec, position_ids=torch.arange(6)[None] * 2, memory=memory, memory_mask=mask)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # the cos/sin tables are fp32
    assert (a - c).abs().max() > 1e-3  # positions do matter inside the decoder


def test_labels_follow_the_transformers_convention():
    model = Seq2SeqLM(ModelConfig(vocab_size=V, max_seq_len=16, n_layer=1, n_head=2, d_model=16, pad_token_id=PAD))
    labels = torch.tensor([[5, 6, 7, -100], [8, 9, -100, -100]])
    assert model.shift_right(labels).tolist() == [[PAD, 5, 6, 7], [PAD, 8, 9, PAD]]
    with pytest.raises(RotaryError, match="labels= .* or decoder_input_ids="):
        model(torch.tensor([[3, 4]]))
    with pytest.raises(RotaryError, match="linear"):
        Seq2SeqLM(ModelConfig(vocab_size=V, max_seq_len=16, n_layer=1, n_head=2, d_model=16, attention="linear"))
    with pytest.raises(RotaryError, match="encoder-decoder"):
        translate_ids(torch.nn.Linear(2, 2), torch.tensor([[1]]))



def test_label_smoothing_smooths_the_training_loss_only():
    """With label_smoothing set, the training loss is cross-entropy with smoothing over the
    scored labels (-100 ignored) and the evaluation loss stays plain cross-entropy (perplexity is
    that of the model, not of the smoothed targets); both checked against F.cross_entropy on the
    model's own logits. Dropout is 0, so train and eval logits are the same."""
    import torch.nn.functional as F

    torch.manual_seed(8)
    cfg = ModelConfig(vocab_size=V, max_seq_len=16, n_layer=1, n_head=2, d_model=16, pad_token_id=PAD,
                      initializer_range=0.3, logits_bias=True)
    model = Seq2SeqLM(cfg)
    with torch.no_grad():
        model.final_logits_bias.copy_(torch.randn(V))
    model.label_smoothing = 0.1
    src, mask = padded_sources()
    labels = torch.randint(2, V, (4, 6))
    labels[1, 3:] = labels[3, 5:] = -100
    with torch.no_grad():
        logits = model.eval()(src, mask, decoder_input_ids=model.shift_right(labels)).reshape(-1, V)
        plain = F.cross_entropy(logits, labels.reshape(-1), ignore_index=-100)
        smoothed = F.cross_entropy(logits, labels.reshape(-1), ignore_index=-100, label_smoothing=0.1)
        assert abs(float(smoothed - plain)) > 0.02  # far enough apart to tell which one was computed
        torch.testing.assert_close(model.eval()(src, mask, labels=labels), plain, rtol=0, atol=1e-5)
        torch.testing.assert_close(model.train()(src, mask, labels=labels), smoothed, rtol=0, atol=1e-5)

@pytest.mark.parametrize("name,change", [("transformer-small", {}), ("transformer-small-rope", {}),
                                         ("transformer-small", dict(position="learned", n_kv_head=2, pre_norm=True,
                                                                    logits_bias=True, share_embeddings=False)),
                                         ("transformer-small", dict(share_embeddings=False, decoder_vocab_size=6000)),
                                         ("transformer-small", dict(share_embeddings=False, decoder_vocab_size=9000,
                                                                    tie_embeddings=False, logits_bias=True))])
def test_presets_and_the_parameter_estimate(name, change):
    from rotary.model.presets import get_preset

    cfg = get_preset(name).replace(**change)
    assert cfg.estimate_num_parameters() == Seq2SeqLM(cfg).num_parameters()
    base = get_preset("transformer-base")
    assert 60e6 < base.estimate_num_parameters() < 66e6  # the paper's 65M (its vocabulary: 37,000)
    assert base.scale_embeddings and base.position == "sinusoidal" and not base.has_embed_norm
    # the sinusoidal presets convert to transformers' Marian as they are
    small = get_preset("transformer-small").replace(vocab_size=V, d_model=32, d_ff=64, pad_token_id=PAD)
    model = Seq2SeqLM(small).eval()
    src, mask = padded_sources()
    dec = torch.randint(2, V, (4, 5))
    with torch.no_grad():
        torch.testing.assert_close(to_hf(model)(input_ids=src, attention_mask=mask, decoder_input_ids=dec).logits,
                                   model(src, mask, decoder_input_ids=dec), rtol=0, atol=1e-4)


def test_saved_marian_stops_at_the_tokenizers_eos(tmp_path, data_char_dir):
    from rotary.hf import save_hf
    from rotary.tokenizer import load_tokenizer

    tok = load_tokenizer(data_char_dir)
    cfg = ModelConfig(vocab_size=tok.vocab_size, max_seq_len=32, n_layer=1, n_head=2, d_model=16, mlp="relu",
                      norm="layernorm", pre_norm=False, bias=True, position="sinusoidal", sinusoidal_layout="halves",
                      embed_norm=False, pad_token_id=tok.pad_id)
    save_hf(Seq2SeqLM(cfg), tmp_path / "hf", data_char_dir)
    saved = tf.AutoConfig.from_pretrained(tmp_path / "hf")
    assert saved.eos_token_id == saved.forced_eos_token_id == tok.sep_id != 0
    assert tf.GenerationConfig.from_pretrained(tmp_path / "hf").eos_token_id == tok.sep_id


@pytest.mark.parametrize("length_penalty,early_stopping", [(0.6, False), (1.0, False), (2.0, False), (1.0, True)])
def test_beam_scores_equal_marian_sequences_scores(trained_marian, length_penalty, early_stopping):
    """The tokens can agree while the normalisation is off by one (length + 1, or the start token
    counted): the returned scores must be transformers' ``sequences_scores``, sum log p / length ** lp."""
    model = from_hf(trained_marian)
    src, mask = padded_sources(6, seed=3)
    with torch.no_grad():
        out = trained_marian.generate(input_ids=src, attention_mask=mask, num_beams=4, length_penalty=length_penalty,
                                      early_stopping=early_stopping, max_new_tokens=10, do_sample=False,
                                      output_scores=True, return_dict_in_generate=True)
    ref = [row[1:] for row in out.sequences.tolist()]
    ref = [r[: r.index(EOS) + 1] if EOS in r else r for r in ref]
    got = translate_ids(model, src, mask, num_beams=4, length_penalty=length_penalty, early_stopping=early_stopping,
                        max_new_tokens=10, eos_id=EOS)
    assert got.tokens == ref
    torch.testing.assert_close(torch.tensor(got.scores, dtype=torch.float64), out.sequences_scores.double(),
                               rtol=0, atol=1e-4)
    assert len({len(t) for t in got.tokens}) > 2  # several lengths, so a wrong length shows in the scores


class MarkovConfig(tf.PretrainedConfig):
    model_type = "rotary-test-markov"


class MarkovLM(tf.PreTrainedModel, tf.GenerationMixin):
    """transformers' generate over the same table ``markov_step`` reads: the oracle for beam search's
    stopping rule on hand-made probabilities (a decoder-only prompt of one start token, so lengths
    count as for the encoder-decoder)."""

    config_class = MarkovConfig

    def __init__(self, config: MarkovConfig, table: torch.Tensor) -> None:
        super().__init__(config)
        self.table = torch.nn.Parameter(table.clone(), requires_grad=False)

    def forward(self, input_ids, attention_mask=None, **kwargs):
        from transformers.modeling_outputs import CausalLMOutput

        return CausalLMOutput(logits=self.table[input_ids])


def stopping_table(case: str) -> torch.Tensor:
    """Log-probabilities over 8 tokens (0 = EOS, 1 = start, 7 = pad) where when beams stop decides
    the answer (K = 2, length penalty 1; in brackets: sum log p / length).

    "late": [0] (-1.20) and [2 0] (-0.45) finish at once, but [3 5 6 0] (-0.35) needs two more
    steps: early_stopping=True stops with [2 0]; False continues, since the best running beam,
    normalised by its length (-1.39 / 2), beats the worst finished one (-1.20) -- unnormalised
    (-1.39) it would not.
    "heuristic": after [0] (-0.69) and [2 0] (-0.78) the best running beam's -1.90 / 2 cannot
    beat -0.78, so transformers stops with [0] although [3 5 6 0] (-0.47) would win: a check that
    normalises by a longer length (or never stops) answers differently."""
    p = 1e-6 * (1 + torch.rand(8, 8, generator=torch.Generator().manual_seed(0)))  # no ties among the rest
    if case == "late":
        p[1, 2], p[1, 0], p[1, 3] = 0.45, 0.3, 0.25
        p[2, 0], p[2, 4] = 0.9, 0.1
    else:
        p[1, 0], p[1, 2], p[1, 3] = 0.5, 0.35, 0.15
        p[2, 0], p[2, 4] = 0.6, 0.4
    p[3, 5] = p[5, 6] = p[6, 0] = p[4, 0] = 1.0
    return p.log()


STOP_ANSWERS = {"late": {False: [3, 5, 6, 0], True: [2, 0], "never": [3, 5, 6, 0]},
                "heuristic": {False: [0], True: [0], "never": [3, 5, 6, 0]}}


@pytest.mark.parametrize("early_stopping", [False, True, "never"])
@pytest.mark.parametrize("length_penalty", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("case", ["late", "heuristic"])
def test_beam_stopping_rule_equals_transformers_generate(case, length_penalty, early_stopping):
    table = stopping_table(case)
    hf = MarkovLM(MarkovConfig(vocab_size=8, eos_token_id=0, bos_token_id=1, pad_token_id=7), table).eval()
    with torch.no_grad():
        out = hf.generate(torch.tensor([[1]]), attention_mask=torch.ones(1, 1, dtype=torch.long), num_beams=2,
                          length_penalty=length_penalty, early_stopping=early_stopping, max_new_tokens=8,
                          do_sample=False, use_cache=False, output_scores=True, return_dict_in_generate=True)
    ref = out.sequences[0, 1:].tolist()
    ref = ref[: ref.index(0) + 1]
    # force_eos=False: the length limit ends a hypothesis as transformers' max_length does, no forced EOS
    got = beam_core(markov_step(table), 1, 2, 1, 0, 8, length_penalty=length_penalty, early_stopping=early_stopping,
                    force_eos=False, pad_id=7)
    assert got.tokens == [ref]
    assert abs(got.scores[0] - float(out.sequences_scores[0])) < 1e-5
    if length_penalty == 1.0:  # the cases decide what they were built to decide (the docstring's numbers)
        assert ref == STOP_ANSWERS[case][early_stopping]
    if case == "heuristic" and length_penalty == 1.0 and not early_stopping:
        with torch.no_grad():  # searching on would have found the longer hypothesis
            never = hf.generate(torch.tensor([[1]]), attention_mask=torch.ones(1, 1, dtype=torch.long), num_beams=2,
                                length_penalty=1.0, early_stopping="never", max_new_tokens=8, do_sample=False,
                                use_cache=False)
        assert never[0, 1:5].tolist() == [3, 5, 6, 0]


def test_beam_search_default_is_transformers_default_stopping():
    """Without early_stopping, beam search stops as transformers' default (False) does."""
    import inspect

    assert inspect.signature(translate_ids).parameters["early_stopping"].default is False
    table = stopping_table("late")
    assert beam_core(markov_step(table), 1, 2, 1, 0, 8, force_eos=False, pad_id=7).tokens == [[3, 5, 6, 0]]



def test_only_the_k_best_continuations_may_finish():
    """An EOS continuation ranked K+1 or lower among the 2K candidates is dropped, as in
    transformers, even when it would win (K = 2). At step two the candidates rank [3 5] (0.36),
    [2 4] (0.33), [2 0] (0.27), [3 0] (0.04): [2 0] scores log 0.27 / 2 = -0.65, better than
    anything that finishes later (after 4, 5, 6 every step keeps two non-EOS tokens ahead of EOS,
    so beams run to the length limit: -0.71), yet it is third, so it never finishes."""
    p = 1e-6 * (1 + torch.rand(8, 8, generator=torch.Generator().manual_seed(0)))  # no ties among the rest
    p[1, 2], p[1, 3] = 0.6, 0.4
    p[2, 4], p[2, 0] = 0.55, 0.45
    p[3, 5], p[3, 0] = 0.9, 0.1
    p[4, 5], p[4, 6], p[4, 0] = 0.46, 0.44, 0.1
    p[5, 6], p[5, 4], p[5, 0] = 0.46, 0.44, 0.1
    p[6, 4], p[6, 5], p[6, 0] = 0.46, 0.44, 0.1
    table = p.log()
    hf = MarkovLM(MarkovConfig(vocab_size=8, eos_token_id=0, bos_token_id=1, pad_token_id=7), table).eval()
    with torch.no_grad():
        out = hf.generate(torch.tensor([[1]]), attention_mask=torch.ones(1, 1, dtype=torch.long), num_beams=2,
                          max_new_tokens=8, do_sample=False, use_cache=False, output_scores=True,
                          return_dict_in_generate=True)
    got = beam_core(markov_step(table), 1, 2, 1, 0, 8, force_eos=False, pad_id=7)
    assert got.tokens == [out.sequences[0, 1:].tolist()] == [[3, 5, 6, 4, 5, 6, 4, 5]]
    assert got.scores[0] == pytest.approx(float(out.sequences_scores[0]), abs=1e-5)
    assert got.scores[0] < math.log(0.27) / 2  # the dropped [2 0] would have won

START = 5  # a decoder start token that is not the pad id (Marian uses one id for both)


@pytest.fixture(scope="module")
def marian_with_own_start(trained_marian):
    import copy

    hf = copy.deepcopy(trained_marian)
    hf.config.decoder_start_token_id = hf.generation_config.decoder_start_token_id = START
    return hf


def test_decoder_start_id_that_differs_from_the_pad_id_starts_every_decoder_input(trained_marian,
                                                                                  marian_with_own_start):
    """Greedy, beam search and the shifted labels begin with decoder_start_token_id, never the
    pad id; padding (-100 labels) still reads as the pad id. transformers is the oracle."""
    hf = marian_with_own_start
    model = from_hf(hf)
    assert (model.config.decoder_start_token_id, model.config.pad_token_id) == (START, PAD)
    assert model.decoder_start_token_id == START
    labels = torch.tensor([[5, 6, 7, -100], [8, 9, -100, -100]])
    assert model.shift_right(labels).tolist() == [[START, 5, 6, 7], [START, 8, 9, PAD]]
    src, mask = padded_sources(6, seed=3)
    labels = torch.randint(2, V, (6, 5), generator=torch.Generator().manual_seed(8))
    labels[1, 3:] = -100
    with torch.no_grad():
        assert abs(float(model(src, mask, labels=labels)) - float(hf(input_ids=src, attention_mask=mask,
                                                                      labels=labels).loss)) < 1e-5
    first_inputs = []  # what the decoder reads at the first step of each decoding
    hook = model.decoder.embed_tokens.register_forward_hook(
        lambda mod, args, out: first_inputs.append(args[0]) if args[0].shape[1] == 1 else None)
    try:
        for num_beams in (1, 3):
            first_inputs.clear()
            with torch.no_grad():
                out = hf.generate(input_ids=src, attention_mask=mask, num_beams=num_beams, max_new_tokens=10,
                                  do_sample=False)
            assert (out[:, 0] == START).all()
            ref = [r[1:] for r in out.tolist()]
            ref = [r[: r.index(EOS) + 1] if EOS in r else r for r in ref]
            got = translate_ids(model, src, mask, num_beams=num_beams, max_new_tokens=10, eos_id=EOS)
            assert got.tokens == ref, num_beams
            assert first_inputs[0].flatten().tolist() == [START] * 6 * num_beams
    finally:
        hook.remove()
    # and the start token matters to this model: from the pad id it translates differently
    padded = translate_ids(from_hf(trained_marian), src, mask, num_beams=3, max_new_tokens=10, eos_id=EOS)
    assert padded.tokens != got.tokens
