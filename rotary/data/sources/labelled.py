"""The labelled-source base: ``train_examples()`` / ``test_examples()`` yield ``(text, label)``.

A source says which ``(text, label)`` rows belong to a split (``_labelled_rows``); the rules every
labelled source shares live here once: blank texts are skipped, ``max_documents`` caps each split,
and a source opened without labels says which corpora have them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from rotary.data.sources.base import Corpus, in_val


class LabelledCorpus(Corpus):
    """A corpus whose documents carry integer labels (``labelled`` may be turned off per instance,
    as for a .jsonl file read without ``label_field``)."""

    labelled = True

    def _labelled_rows(self, test: bool) -> Iterator[tuple[str | None, int]]:
        """(text, label) of the test split (or of the train split), in order."""
        raise NotImplementedError

    @staticmethod
    def _hash_split(rows: Iterable[tuple[str | None, int]], fraction: float,
                    test: bool) -> Iterator[tuple[str | None, int]]:
        """The rows whose text a hash puts in the test split (or in the train split)."""
        for text, label in rows:
            if text and in_val(text, fraction) == test:
                yield text, label

    def _examples(self, test: bool) -> Iterator[tuple[str, int]]:
        if not self.labelled:
            raise self._no_labels()
        n = 0
        for text, label in self._labelled_rows(test):
            if not text or not text.strip():
                continue
            if self.max_documents is not None and n >= self.max_documents:
                return
            n += 1
            yield text, label

    def train_examples(self) -> Iterator[tuple[str, int]]:
        return self._examples(test=False)

    def test_examples(self) -> Iterator[tuple[str, int]]:
        return self._examples(test=True)
