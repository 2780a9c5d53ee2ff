"""Kernels: the CPU GEMM backend, the fused linear + cross entropy, the fused CPU RMSNorm, and
the Inductor-compiled pieces of bf16 CPU training (``inductor``: the attention backward in
``training_attention``, the loss head's softmax, the pre-norm RMSNorm).

Each computes exactly what a plain PyTorch expression computes (tested against it), only faster;
``rotary.model`` calls them and stays the formulas.
"""
