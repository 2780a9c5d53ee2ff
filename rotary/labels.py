"""The label convention shared by the data and the model's losses.

It lives on its own so that the data layer and the model both import it without either
depending on the other.
"""

IGNORE_INDEX = -100
"""A label no loss counts: positions that are not predicted (PyTorch's and transformers' default)."""

__all__ = ["IGNORE_INDEX"]
