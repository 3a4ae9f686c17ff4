"""Multi-label class conditioning as one joint class index, so the model stays a stock ``UNet2DModel``.

Each combination of label values (e.g. ``dr_grade=2, amd=1``) is one class of ``UNet2DModel``'s own
``num_class_embeds`` embedding, numbered in mixed radix over the per-column vocabularies. The saved model is a
plain diffusers ``UNet2DModel`` any user can load and call with ``class_labels``; the card maps classes to
labels. A per-column summed embedding would share strength across columns but needs a custom module that
plain diffusers cannot load; the label sets of fundus datasets are small (5 DR grades x a few binary flags),
so the joint table stays small, and :data:`MAX_CLASSES` refuses column sets where it would not.

When a caller fixes only some columns (``dr_grade=2``), the others are drawn per image from the training
frequencies of the combinations that match, so the model is only asked for combinations it has seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from ..errors import InputError, ModelError

MAX_VALUES_PER_COLUMN = 32
"""More distinct values than this suggests a continuous column, which class conditioning cannot use."""
MAX_CLASSES = 4096


def _sort_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


@dataclass(frozen=True)
class Conditioning:
    """Label columns, their value vocabularies and the training count of each joint class."""

    columns: tuple[str, ...]
    vocab: dict[str, tuple[str, ...]]
    counts: dict[int, int]
    """Joint class index -> number of training images with that label combination."""

    @property
    def num_classes(self) -> int:
        """Size of the joint class table (``num_class_embeds`` of the UNet)."""
        return math.prod(len(self.vocab[c]) for c in self.columns)

    @classmethod
    def from_labels(cls, columns: Sequence[str], rows: Sequence[Mapping[str, str]]) -> "Conditioning":
        """Build from the training records' labels. Raises :class:`InputError` naming every unusable column."""
        columns = tuple(dict.fromkeys(c.strip() for c in columns if c.strip()))
        problems = []
        vocab: dict[str, tuple[str, ...]] = {}
        for col in columns:
            values = [r.get(col) for r in rows]
            missing = sum(1 for v in values if v is None or v == "")
            if missing:
                problems.append(f"column {col!r} is missing or empty for {missing} of {len(rows)} training images")
                continue
            uniq = tuple(sorted(set(values), key=_sort_key))  # type: ignore[arg-type]
            if len(uniq) > MAX_VALUES_PER_COLUMN:
                problems.append(f"column {col!r} has {len(uniq)} distinct values (at most "
                                f"{MAX_VALUES_PER_COLUMN} for class conditioning)")
            vocab[col] = uniq
        if problems:
            raise InputError("cannot condition on labels: " + "; ".join(problems))
        total = math.prod(len(v) for v in vocab.values())
        if total > MAX_CLASSES:
            raise InputError(f"cannot condition on {', '.join(columns)}: {total} label combinations "
                             f"(at most {MAX_CLASSES})")
        cond = cls(columns=columns, vocab=vocab, counts={})
        counts: dict[int, int] = {}
        for r in rows:
            k = cond.class_index({c: r[c] for c in columns})
            counts[k] = counts.get(k, 0) + 1
        return cls(columns=columns, vocab=vocab, counts=dict(sorted(counts.items())))

    def class_index(self, values: Mapping[str, str]) -> int:
        """Mixed-radix index of a full label combination."""
        index = 0
        for col in self.columns:
            index = index * len(self.vocab[col]) + self.vocab[col].index(values[col])
        return index

    def labels_of(self, index: int) -> dict[str, str]:
        """Inverse of :meth:`class_index`."""
        out: dict[str, str] = {}
        for col in reversed(self.columns):
            index, rem = divmod(index, len(self.vocab[col]))
            out[col] = self.vocab[col][rem]
        return {c: out[c] for c in self.columns}

    def validate(self, labels: Mapping[str, str]) -> list[tuple[int, int]]:
        """Check requested labels; returns the ``(class, training count)`` pairs that match them.

        Raises :class:`ModelError` for a column the model was not conditioned on, a value outside its
        vocabulary, or a combination no training image had.
        """
        problems = []
        for col, value in labels.items():
            if col not in self.vocab:
                problems.append(f"the model was not conditioned on {col!r} (it knows: {', '.join(self.columns)})")
            elif str(value) not in self.vocab[col]:
                problems.append(f"{col}={value} was never seen in training (values: {', '.join(self.vocab[col])})")
        if problems:
            raise ModelError("; ".join(problems))
        matching = [(k, n) for k, n in self.counts.items()
                    if all(self.labels_of(k)[c] == str(v) for c, v in labels.items())]
        if not matching:
            wanted = ", ".join(f"{c}={v}" for c, v in labels.items())
            raise ModelError(f"no training image had the label combination {wanted}")
        return matching

    def draw(self, matching: Sequence[tuple[int, int]], generator: torch.Generator) -> int:
        """Draw one class from ``matching`` in proportion to its training count."""
        if len(matching) == 1:
            return matching[0][0]
        weights = torch.tensor([float(n) for _, n in matching])
        pick = int(torch.multinomial(weights, 1, generator=generator).item())
        return matching[pick][0]

    def to_dict(self) -> dict[str, Any]:
        """JSON form stored in the training card (counts keyed by readable label combinations)."""
        return {
            "columns": list(self.columns),
            "vocab": {c: list(v) for c, v in self.vocab.items()},
            "classes": [{"class": k, "labels": self.labels_of(k), "count": n} for k, n in self.counts.items()],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Conditioning":
        """Inverse of :meth:`to_dict`, for a card read from disk (untrusted): every column, value and class is
        checked against the same limits :meth:`from_labels` applies. Raises :class:`ModelError` when malformed."""
        try:
            columns = tuple(data["columns"])
            vocab = {c: tuple(str(v) for v in data["vocab"][c]) for c in columns}
            counts = {int(e["class"]): int(e["count"]) for e in data["classes"]}
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise ModelError(f"malformed conditioning in training card ({type(exc).__name__}: {exc})") from None
        problems = _card_problems(columns, vocab, counts)
        if problems:
            raise ModelError("malformed conditioning in training card: " + "; ".join(problems))
        return cls(columns=columns, vocab=vocab, counts=dict(sorted(counts.items())))


def _card_problems(columns: tuple[Any, ...], vocab: dict[Any, tuple[str, ...]], counts: dict[int, int]) -> list[str]:
    """Why conditioning read from a card is unusable: bad column names, vocabularies or class counts."""
    if not columns or len(set(columns)) != len(columns) or not all(isinstance(c, str) and c for c in columns):
        return ["columns must be distinct non-empty names"]
    problems = [f"column {c!r} must have 1 to {MAX_VALUES_PER_COLUMN} distinct values" for c in columns
                if not 1 <= len(vocab[c]) <= MAX_VALUES_PER_COLUMN or len(set(vocab[c])) != len(vocab[c])]
    if problems:
        return problems
    total = math.prod(len(vocab[c]) for c in columns)
    if total > MAX_CLASSES:
        return [f"{total} label combinations (at most {MAX_CLASSES})"]
    if not counts or any(not 0 <= k < total or n < 1 for k, n in counts.items()):
        problems.append(f"classes must be indices in [0, {total}) with counts >= 1")
    return problems
