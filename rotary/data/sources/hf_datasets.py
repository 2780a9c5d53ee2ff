"""HF datasets: ``datasets.load_dataset`` by name (``hf:NAME``), or a directory saved to disk."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rotary.config import closest_key_hint
from rotary.data.sources.base import HashSplitCorpus
from rotary.errors import RotaryError


def load_dataset_dict(name: str, *, config: str | None = None, data_files: Any = None,
                      from_disk: bool | None = None) -> Any:
    """A ``datasets.DatasetDict``: ``load_dataset(name, config, data_files=...)``, or ``load_from_disk``
    for a saved directory (``from_disk`` None: when ``name`` is one that ``save_to_disk`` wrote; a
    folder of data files goes to ``load_dataset``). One-line errors."""
    try:
        import datasets
    except ImportError:
        raise RotaryError("HF datasets need the 'datasets' package: pip install datasets") from None
    if from_disk is None:
        from pathlib import Path

        from_disk = any((Path(name) / f).is_file() for f in ("dataset_dict.json", "state.json"))
    try:
        ds = datasets.load_from_disk(name) if from_disk else datasets.load_dataset(name, config, data_files=data_files)
    except Exception as err:  # network, missing dataset, bad config: all user-fixable
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RotaryError(f"could not load HF dataset '{name}': {first}") from None
    return datasets.DatasetDict({"train": ds}) if isinstance(ds, datasets.Dataset) else ds


class HFDatasetCorpus(HashSplitCorpus):
    """``datasets.load_dataset(name, config, data_files=...)``, or ``load_from_disk`` for a saved dataset.

    Asked for as ``hf:NAME`` (``hf:wikitext``, ``hf:json`` with ``data_files=...``) or by the
    path of a directory written by ``Dataset.save_to_disk``. The validation split is the
    dataset's own ``val_split`` when it has one (validation, then test), else a hash split of
    the training split.
    """

    def __init__(self, name: str, *, config: str | None = None, split: str = "train",
                 val_split: str | None = None, text_field: str = "text",
                 data_files: str | list[str] | None = None, from_disk: bool = False,
                 val_fraction: float | None = None, max_documents: int | None = None) -> None:
        super().__init__(val_fraction=val_fraction, max_documents=max_documents)
        self.name = name if from_disk else f"hf:{name}"
        self.hf_name, self.config, self.split_name = name, config, split
        self.text_field, self.data_files = text_field, data_files
        self.from_disk = from_disk
        self.description = f"HF dataset {name}" + (f" ({config})" if config else "")
        self._dataset = self._load()
        splits = list(self._dataset.keys())
        if split not in splits:
            raise RotaryError(f"{self.name}: no split '{split}'{closest_key_hint(split, splits)}")
        if val_split is None:
            val_split = next((s for s in ("validation", "valid", "val", "test") if s in splits and s != split), None)
        elif val_split not in splits:
            raise RotaryError(f"{self.name}: no split '{val_split}'{closest_key_hint(val_split, splits)}")
        self.val_split = val_split
        columns = self._dataset[split].column_names
        if text_field not in columns:
            raise RotaryError(f"{self.name}: no column '{text_field}'{closest_key_hint(text_field, columns)}")

    def _load(self) -> Any:
        return load_dataset_dict(self.hf_name, config=self.config, data_files=self.data_files,
                                 from_disk=self.from_disk)

    def _rows(self, split_name: str) -> Iterator[dict[str, Any]]:
        ds = self._dataset[split_name]
        cols = [self.text_field]
        # Batched column access: far faster than row-by-row __getitem__ on Arrow data.
        for start in range(0, len(ds), 4096):
            batch = ds[start:start + 4096]
            for i in range(len(batch[self.text_field])):
                yield {c: batch[c][i] for c in cols}

    def _texts(self, split_name: str) -> Iterator[tuple[str, int]]:
        for i, row in enumerate(self._rows(split_name)):
            text = row[self.text_field]
            if text is None:
                continue
            if not isinstance(text, str):
                raise RotaryError(f"{self.name}[{split_name}] row {i}: '{self.text_field}' is not a string")
            yield text, 0

    def _all_documents(self) -> Iterator[tuple[str, int]]:
        return self._texts(self.split_name)

    def _documents(self, split: str) -> Iterator[tuple[str, int]]:
        if self.val_split is None:
            yield from super()._documents(split)
        else:
            yield from self._texts(self.split_name if split == "train" else self.val_split)

    def fingerprint(self) -> dict[str, Any]:
        fps = {}
        for k, ds in self._dataset.items():
            fps[k] = getattr(ds, "_fingerprint", None)
        return {**super().fingerprint(), "hf": self.hf_name, "config": self.config, "data_files": self.data_files,
                "split": self.split_name, "val_split": self.val_split, "text_field": self.text_field,
                "val_fraction": self.val_fraction, "dataset_fingerprints": fps}

