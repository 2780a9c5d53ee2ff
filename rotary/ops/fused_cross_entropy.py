"""Cross entropy fused with the output projection, computed in row chunks.

A language model's last layer makes a (tokens x vocab) logits tensor that is used once: for the
loss, then for its gradient. Materialising it costs a CPU about as much as the projection's GEMMs (a
fresh 64 MB buffer for 2,048 tokens x 8,192 vocab is page-faulted in on every step, then
log_softmax, its backward and a zero-filled gradient each pass over it). Here the projection,
the softmax and both gradients are done a few hundred rows at a time in the forward pass, so the
largest temporary is one chunk's logits, which stays in cache; backward only scales the stored
gradients. The result equals ``F.cross_entropy(F.linear(h, w, b).float(), y)`` up to float
rounding (tested against it).
"""

from __future__ import annotations

import torch

from rotary.labels import IGNORE_INDEX
from rotary.ops import gemm, inductor

# Rows per chunk are chosen so one chunk's fp32 logits take about this many bytes. bf16/fp16
# chunks are 4x larger: their GEMMs (AMX) need more rows to run fast, and each chunk's weight
# gradient is widened to fp32 and added, a pass over (vocab, d) that fewer chunks amortise
# (demo model, vocab 8,192, 2 Xeon cores: 854 -> 765 ms per bf16 step; fp32 unchanged).
CHUNK_BYTES = 4 << 20
CHUNK_BYTES_LOW_PRECISION = 16 << 20


def _chunk_rows(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_rows: int | None
) -> int:
    if hidden.dim() != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(
            "hidden must be (N, d) and labels (N,), "
            f"got {tuple(hidden.shape)} and {tuple(labels.shape)}"
        )
    budget = CHUNK_BYTES if _compute_dtype(hidden) == torch.float32 else CHUNK_BYTES_LOW_PRECISION
    return chunk_rows or max(64, budget // (4 * weight.shape[0]))


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return hidden.dtype


def _nll_and_grad(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                  bias_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One chunk's weighted loss sum, its gradient d loss / d logits already weighted (ignored
    rows zero) in the logits' dtype, and with ``bias_grad`` the gradient's column sums in fp32.

    What the eager loop below does in five passes over a (rows, vocab) fp32 tensor; compiled
    (``rotary.ops.inductor``) it reads the bf16 logits three times and writes the gradient once
    (bf16 demo step, 2 Xeon threads: 304 -> 298 ms). The target's entry, p_y - 1, is computed
    from the gathered logit and written afterwards: a one-hot over the vocabulary would compare
    a column index with the target at every element (a 512 x 8192 chunk, 2 Xeon threads:
    3.6 -> 2.5 ms; with the bias gradient 6.2 -> 3.5 ms; the same gradient, bit for bit).
    """
    x = logits.float()  # (n, V)
    lse = x.logsumexp(-1, keepdim=True)  # (n, 1)
    picked = x.gather(1, targets[:, None])  # (n, 1)
    loss = ((lse - picked).squeeze(1) * weights).sum()
    w = weights[:, None]
    grad = (torch.exp(x - lse) * w).to(logits.dtype)
    grad = grad.scatter(1, targets[:, None], ((torch.exp(picked - lse) - 1.0) * w).to(logits.dtype))
    if not bias_grad:
        return loss, grad, None
    return loss, grad, (torch.exp(x - lse) * w).sum(0).index_add(0, targets, -weights)


_compiled_nll_and_grad = inductor.kernel(_nll_and_grad)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_rows, ignore_index):  # autograd API
        n, vocab = hidden.shape[0], weight.shape[0]
        dtype = _compute_dtype(hidden)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        with torch.autocast(hidden.device.type, enabled=False):
            h = hidden.to(dtype)
            w = weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            valid = labels != ignore_index
            # Ignored rows read class 0 and are weighted 0: no data-dependent shapes, no host sync.
            targets = labels.masked_fill(~valid, 0)
            weights = valid.to(torch.float32)
            loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_h = torch.empty_like(hidden, dtype=torch.float32) if need_h else None
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
            grad_b = (
                torch.zeros(vocab, dtype=torch.float32, device=hidden.device) if need_b else None
            )
            # bf16/fp16: each chunk's weight gradient lands in reused buffers (the GEMM's output,
            # then widened to fp32) before it is added to the fp32 sum; a fresh (vocab, d) tensor
            # per chunk costs a CPU more in page faults than the GEMM itself (measured ~8 ms each)
            low_precision_w = need_w and dtype != torch.float32
            grad_w_chunk = torch.empty_like(weight, dtype=dtype) if low_precision_w else None
            grad_w_wide = torch.empty_like(weight, dtype=torch.float32) if low_precision_w else None
            # bf16/fp16 training: the compiled chunk kernel; its gradient comes weighted, so the
            # GEMMs after it need no row scaling
            fused = dtype != torch.float32 and (need_h or need_w or need_b) and inductor.active()
            for start in range(0, n, chunk_rows):
                end = min(start + chunk_rows, n)
                h_c, y_c, m_c = h[start:end], targets[start:end], weights[start:end]
                if fused:
                    loss_c, grad, grad_b_c = _compiled_nll_and_grad(gemm.linear(h_c, w, b), y_c, m_c, need_b)
                    loss_sum += loss_c
                    if need_b:
                        grad_b += grad_b_c
                    if need_h:
                        grad_h[start:end] = gemm.matmul_nn(grad, w)
                    if need_w:
                        grad_w += grad_w_wide.copy_(torch.mm(grad.t(), h_c, out=grad_w_chunk))
                    continue
                rows = torch.arange(end - start, device=h_c.device)
                logp = gemm.linear(h_c, w, b).float().log_softmax(-1)
                loss_sum -= logp[rows, y_c] @ m_c
                if not (need_h or need_w or need_b):
                    continue
                # d(-log p_y)/d logits = softmax - onehot, for the kept rows; scaled by 1/n
                # later, in fp32, so fp16/bf16 GEMMs see values in [-1, 1], not underflowing ones.
                grad = logp.exp_()
                grad[rows, y_c] -= 1.0
                if need_b:
                    grad_b += m_c @ grad
                grad = grad.to(dtype)
                if need_h:
                    grad_h[start:end] = gemm.matmul_nn(grad, w).float().mul_(m_c[:, None])
                if need_w:
                    h_kept = h_c * m_c[:, None].to(dtype)
                    if dtype == torch.float32:
                        # in place, no temporary (vocab, d) product: the BLAS even where oneDNN
                        # does the other GEMMs (measured: oneDNN + an add is no faster)
                        grad_w.addmm_(grad.t(), h_kept)
                    else:
                        grad_w += grad_w_wide.copy_(torch.mm(grad.t(), h_kept, out=grad_w_chunk))
            # Mean over kept rows. None kept gives 0 and zero gradients (F.cross_entropy gives NaN,
            # which would stop a run whose MLM micro-batch happened to draw no masked token).
            scale = 1.0 / weights.sum().clamp(min=1.0)
        ctx.save_for_backward(
            *(g.mul_(scale) if g is not None else None for g in (grad_h, grad_w, grad_b))
        )
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return loss_sum * scale

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        out = []
        for g, dtype in ((grad_h, h_dtype), (grad_w, w_dtype), (grad_b, b_dtype)):
            # In place: a fresh (vocab, d) tensor costs a CPU ~3,000 page faults per step. A second
            # backward (retain_graph) is refused by autograd's saved-tensor version check.
            out.append(None if g is None else g.mul_(grad_loss).to(dtype))
        return out[0], out[1], out[2], None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         labels: torch.Tensor, chunk_rows: int | None = None,
                         ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross entropy of ``F.linear(hidden, weight, bias)`` against ``labels``, over the
    rows whose label is not ``ignore_index`` (``F.cross_entropy``'s semantics, except that no
    labelled row at all gives 0, not NaN).

    ``hidden`` is (N, d), ``labels`` (N,). Softmax runs in fp32; under autocast the GEMMs use
    the autocast dtype. No (N, vocab) tensor is kept for backward.
    """
    chunk_rows = _chunk_rows(hidden, weight, labels, chunk_rows)
    return _LinearCrossEntropy.apply(hidden, weight, bias, labels, chunk_rows, ignore_index)


@torch.no_grad()
def cross_entropy_stats(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        labels: torch.Tensor, chunk_rows: int | None = None,
                        ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Evaluation without logits: float64 (3,) tensor of (sum of token losses, labelled tokens,
    tokens whose argmax is the label), over rows of ``F.linear(hidden, weight, bias)``.

    Memory stays at one chunk of logits, so a large vocabulary does not make evaluation need
    more memory than training.
    """
    chunk_rows = _chunk_rows(hidden, weight, labels, chunk_rows)
    valid = labels != ignore_index
    targets = labels.masked_fill(~valid, 0)
    out = torch.zeros(3, dtype=torch.float64, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_rows):
        end = min(start + chunk_rows, hidden.shape[0])
        logits = gemm.linear(hidden[start:end], weight, bias).float()
        y, m = targets[start:end], valid[start:end]
        losses = logits.logsumexp(-1) - logits.gather(1, y[:, None]).squeeze(1)
        out[0] += losses[m].sum()
        out[1] += m.sum()
        out[2] += ((logits.argmax(-1) == y) & m).sum()
    return out
