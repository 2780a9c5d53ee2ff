"""The names of the built-in corpora, importable without torch (for ``--help``).

The registries that map these names to their classes (``rotary.data.sources.CORPORA``,
``rotary.data.parallel``) check at import that they hold exactly these names.
"""

from __future__ import annotations

CORPUS_NAMES = ("shakespeare", "peoples-daily", "chinese-sentiment", "thucnews", "sanguo", "enwiki-sample")
PARALLEL_NAMES = ("tatoeba-zh-en",)
