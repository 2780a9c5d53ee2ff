"""The fused, chunked linear + cross entropy, and the models' ``labels=`` training path, against
``F.cross_entropy`` on materialised logits."""

import pytest
import torch
import torch.nn.functional as F

from rotary.errors import RotaryError
from rotary.model import CausalLM, MaskedLM, ModelConfig
from rotary.ops.fused_cross_entropy import linear_cross_entropy


def reference(h, w, b, y):
    return F.cross_entropy(F.linear(h, w, b).float(), y)


def grads_of(fn, *tensors):
    for t in tensors:
        t.grad = None
    loss = fn()
    loss.backward()
    return loss.detach(), [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 1000])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_cross_entropy_on_logits_value_and_gradients(chunk_rows, with_bias):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(50, 16, generator=g, requires_grad=True)
    w = torch.randn(37, 16, generator=g).mul_(0.5).requires_grad_()
    b = torch.randn(37, generator=g).requires_grad_() if with_bias else None
    y = torch.randint(0, 37, (50,), generator=g)
    params = [h, w] + ([b] if with_bias else [])
    ref_loss, ref_grads = grads_of(lambda: reference(h, w, b, y), *params)
    loss, got = grads_of(lambda: linear_cross_entropy(h, w, b, y, chunk_rows), *params)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    for a, e in zip(got, ref_grads):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-7)


def test_backward_scales_by_the_incoming_gradient_and_accumulates():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(20, 8, generator=g, requires_grad=True)
    w = torch.randn(11, 8, generator=g, requires_grad=True)
    y = torch.randint(0, 11, (20,), generator=g)
    _, ref = grads_of(lambda: 3.0 * reference(h, w, None, y) + reference(h, w, None, y), h, w)
    _, got = grads_of(lambda: 3.0 * linear_cross_entropy(h, w, None, y, 6) + linear_cross_entropy(h, w, None, y), h, w)
    for a, e in zip(got, ref):
        torch.testing.assert_close(a, e)


def test_a_second_backward_through_the_same_loss_is_refused_not_wrong():
    # backward scales its stored gradients in place; autograd must catch a second use
    g = torch.Generator().manual_seed(2)
    h = torch.randn(100, 8, generator=g, requires_grad=True)
    w = torch.randn(20, 8, generator=g, requires_grad=True)
    loss = linear_cross_entropy(h, w, None, torch.randint(0, 20, (100,), generator=g))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_frozen_weight_and_no_grad():
    g = torch.Generator().manual_seed(2)
    h = torch.randn(9, 8, generator=g, requires_grad=True)
    w = torch.randn(5, 8, generator=g)  # frozen
    y = torch.randint(0, 5, (9,), generator=g)
    _, (gh,) = grads_of(lambda: linear_cross_entropy(h, w, None, y, 4), h)
    _, (rh,) = grads_of(lambda: reference(h, w, None, y), h)
    torch.testing.assert_close(gh, rh)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, None, y), reference(h, w, None, y))


def test_bf16_autocast_is_close_to_fp32():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(64, 32, generator=g, requires_grad=True)
    w = torch.randn(50, 32, generator=g).mul_(0.2).requires_grad_()
    y = torch.randint(0, 50, (64,), generator=g)
    ref_loss, ref = grads_of(lambda: reference(h, w, None, y), h, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, got = grads_of(lambda: linear_cross_entropy(h, w, None, y, 16), h, w)
    assert loss.dtype == torch.float32 and got[1].dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, rtol=2e-2, atol=2e-2)
    for a, e in zip(got, ref):
        assert (a - e).norm() / e.norm() < 2e-2


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        linear_cross_entropy(torch.randn(2, 3, 4), torch.randn(5, 4), None, torch.zeros(2, 3, dtype=torch.long))


def _model_cfg(**kw):
    base = dict(vocab_size=64, max_seq_len=16, n_layer=2, n_head=4, d_model=32, d_ff=64)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("tie", [False, True])
def test_causal_lm_labels_path_equals_loss_on_logits(tie):
    torch.manual_seed(0)
    model = CausalLM(_model_cfg(tie_embeddings=tie))
    ids = torch.randint(0, 64, (3, 12))
    labels = torch.randint(0, 64, (3, 12))
    labels[1, :4] = -100  # ignored positions change neither the value nor the mean
    params = list(model.parameters())
    ref_loss, ref = grads_of(lambda: model.loss_fn(model(ids), labels), *params)
    loss, got = grads_of(lambda: model(ids, targets=labels), *params)
    torch.testing.assert_close(loss, ref_loss)
    for a, e in zip(got, ref):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("tie", [False, True])
def test_causal_lm_labels_are_shifted_inside_as_in_transformers(tie):
    # labels= is aligned with input_ids: position t is scored against labels[t + 1], so
    # model(ids, labels=ids) is next-token prediction, not copying the input
    torch.manual_seed(0)
    model = CausalLM(_model_cfg(tie_embeddings=tie))
    ids = torch.randint(0, 64, (3, 12))
    labels = ids.clone()
    labels[1, :4] = -100
    params = list(model.parameters())
    ref_loss, ref = grads_of(lambda: model.loss_fn(model(ids)[:, :-1], labels[:, 1:]), *params)
    loss, got = grads_of(lambda: model(ids, labels=labels), *params)
    torch.testing.assert_close(loss, ref_loss)
    for a, e in zip(got, ref):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        stats = model(ids, labels=labels, return_stats=True)
    assert stats[1] == (labels[:, 1:] != -100).sum()
    with pytest.raises(RotaryError, match="not both"):
        model(ids, labels=ids, targets=ids)


def test_the_hf_idiom_labels_equal_ids_does_not_learn_to_copy():
    # the symptom: with unshifted labels, 60 steps on random tokens reached loss 0.09
    # (copying generalises to unseen tokens; predicting a random next token cannot)
    torch.manual_seed(0)
    model = CausalLM(_model_cfg())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        ids = torch.randint(0, 64, (8, 16))
        loss = model(ids, labels=ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        unseen = torch.randint(0, 64, (8, 16))
        assert model(unseen, labels=unseen).item() > 3.0  # log(64) = 4.16 is the best possible


def test_masked_lm_runs_its_head_on_labelled_positions_only():
    torch.manual_seed(0)
    model = MaskedLM(_model_cfg(causal=False, mlp="gelu", norm="layernorm", pre_norm=False, bias=True,
                                type_vocab_size=2))
    ids = torch.randint(0, 64, (4, 16))
    labels = torch.full_like(ids, -100)
    picked = torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) < 0.15
    labels[picked] = ids[picked]
    params = list(model.parameters())
    ref_loss, ref = grads_of(lambda: model.loss_fn(model(ids), labels), *params)
    seen = []
    hook = model.head.dense.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    loss, got = grads_of(lambda: model(ids, labels=labels), *params)
    hook.remove()
    assert seen == [torch.Size([int(picked.sum()), 32])]
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(model(ids, targets=labels), loss)  # MLM labels are never shifted
    for a, e in zip(got, ref):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-6)


def test_ignored_rows_count_for_nothing_and_all_ignored_is_zero():
    g = torch.Generator().manual_seed(4)
    h = torch.randn(30, 8, generator=g, requires_grad=True)
    w = torch.randn(13, 8, generator=g, requires_grad=True)
    b = torch.randn(13, generator=g, requires_grad=True)
    y = torch.randint(0, 13, (30,), generator=g)
    y[::3] = -100
    ref_loss, ref = grads_of(lambda: F.cross_entropy(F.linear(h, w, b), y), h, w, b)
    loss, got = grads_of(lambda: linear_cross_entropy(h, w, b, y, 7), h, w, b)
    torch.testing.assert_close(loss, ref_loss)
    for a, e in zip(got, ref):
        torch.testing.assert_close(a, e)
    assert got[0][::3].abs().max() == 0
    # a micro-batch without one labelled token (possible in MLM) contributes nothing, not NaN
    loss, got = grads_of(lambda: linear_cross_entropy(h, w, b, torch.full_like(y, -100)), h, w, b)
    assert loss == 0 and all(g.abs().max() == 0 for g in got)


@pytest.mark.parametrize("mlm", [False, True])
def test_evaluation_stats_equal_sums_over_materialised_logits(mlm):
    torch.manual_seed(0)
    if mlm:
        model = MaskedLM(_model_cfg(causal=False, mlp="gelu", norm="layernorm", pre_norm=False, bias=True))
    else:
        model = CausalLM(_model_cfg())
    model.eval()
    ids = torch.randint(0, 64, (3, 16))
    labels = torch.randint(0, 64, (3, 16))
    labels[torch.rand(labels.shape, generator=torch.Generator().manual_seed(3)) < 0.5] = -100
    key = "labels" if mlm else "targets"  # per-position labels (MLM's labels= are, too)
    with torch.no_grad():
        logits = model(ids)
        stats = model(ids, **{key: labels}, return_stats=True)
    keep = labels != -100
    expected_loss = F.cross_entropy(logits[keep], labels[keep], reduction="sum")
    expected_correct = (logits.argmax(-1)[keep] == labels[keep]).sum()
    assert stats.dtype == torch.float64 and stats.shape == (3,)
    torch.testing.assert_close(stats[0].float(), expected_loss, rtol=1e-5, atol=1e-5)
    assert stats[1] == keep.sum() and stats[2] == expected_correct
    # correct counts: labels equal to the argmax are all counted
    argmax_labels = torch.where(keep, logits.argmax(-1), -100)
    with torch.no_grad():
        assert model(ids, **{key: argmax_labels}, return_stats=True)[2] == keep.sum()


def test_masked_lm_batch_without_masked_tokens_gives_zero_loss():
    model = MaskedLM(_model_cfg(causal=False, mlp="gelu", norm="layernorm", pre_norm=False, bias=True))
    ids = torch.randint(0, 64, (2, 8))
    loss = model(ids, labels=torch.full_like(ids, -100))
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.parameters())
