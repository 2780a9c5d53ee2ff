"""Kernels: the CPU GEMM backend, the fused linear + cross entropy, the fused CPU RMSNorm.

Each computes exactly what a plain PyTorch expression computes (tested against it), only faster;
``rotary.model`` calls them and stays the formulas.
"""
