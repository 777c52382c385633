"""Verification: an exported artifact must reproduce PyTorch, and be batch invariant.

Every check feeds the artifact and the reference the same inputs, built from fixed seeds the
way the server builds them (`ganserve.serve.inputs.feeds_for_seeds`: z, then any noise, from
the seed's stream), covering every class at each batch size (1, a prime, and the max batch by
default). Models with truncation_mode "w" (stylegan) are checked a second time with a
different truncation psi and style-mixing layer on every row of the batch. Two tolerances:

* FP32 ONNX: max |artifact - PyTorch| <= 1e-4 in the [-1, 1] output range.
* FP16 ONNX and TensorRT engines: after the shared uint8 post-processing, >= 99.9% of pixels
  within +-1 level and none more than 4 levels apart.

Batch invariance: each seed computed alone gives the same uint8 image as inside its batch
(exactly for FP32 ONNX, within the uint8 tolerance for reduced-precision engines, whose
kernels may legitimately differ per batch size).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from ganserve.serve import inputs
from ganserve.serve.imaging import to_uint8
from ganserve.serve.metadata import ModelMetadata

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]  # feeds (input name -> batch) -> NCHW
PSI_CYCLE = (0.7, 1.0, 0.5, 0.0)  # per-row truncation of the "styled" check
MIX_SEED_OFFSET = 1_000_000  # z_mix's seed, per row


class VerificationError(RuntimeError):
    """An artifact is out of tolerance; the message gives the worst case."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Tolerance:
    """Accepted difference between an artifact and PyTorch.

    Args:
        max_abs: Largest |difference| in [-1, 1] (FP32); None to judge in uint8 levels.
        max_levels: Largest uint8 difference anywhere.
        min_within_one: Share of pixels that must be within +-1 uint8 level.
    """

    max_abs: float | None = None
    max_levels: int = 4
    min_within_one: float = 0.999

    def describe(self) -> str:
        if self.max_abs is not None:
            return f"max |diff| <= {self.max_abs:g}"
        return (
            f">= {self.min_within_one:.1%} of pixels within 1 uint8 level, none more than "
            f"{self.max_levels}"
        )


FP32 = Tolerance(max_abs=1e-4)
REDUCED_PRECISION = Tolerance()


@dataclasses.dataclass
class _Worst:
    abs_diff: float = 0.0
    level_diff: int = 0
    within_one: float = 1.0
    where: str = ""


def _cases(num_classes: int, batch: int) -> list[tuple[list[int], np.ndarray]]:
    """Batches of size ``batch`` that together cover every class: (seeds, labels)."""
    classes = max(num_classes, 1)
    out = []
    for k in range(math.ceil(classes / batch)):
        first = 1000 * batch + k * batch
        seeds = list(range(first, first + batch))
        labels = (np.arange(k * batch, (k + 1) * batch) % classes).astype(np.int64)
        out.append((seeds, labels))
    return out


def _compare(
    got: np.ndarray,
    want: np.ndarray,
    tol: Tolerance,
    worst: _Worst,
    describe: Callable[[int], str],
    what: str,
) -> None:
    """Update ``worst``; raise VerificationError when out of tolerance."""
    if got.shape != want.shape:
        raise VerificationError(f"{what}: output shape {got.shape} != expected {want.shape}")
    if not np.isfinite(got).all():
        raise VerificationError(f"{what}: non-finite output ({describe(0)})")
    diff = np.abs(got.astype(np.float64) - want)
    levels = np.abs(to_uint8(got).astype(np.int16) - to_uint8(want).astype(np.int16))
    within_one = float((levels <= 1).mean())
    i = int(np.unravel_index(diff.argmax(), diff.shape)[0])
    if diff.max() > worst.abs_diff:
        c, y, x = np.unravel_index(diff[i].argmax(), diff[i].shape)
        worst.abs_diff = float(diff.max())
        worst.where = (
            f"{describe(i)}, pixel (c={c}, y={y}, x={x}): {got[i, c, y, x]:.6f} vs "
            f"{want[i, c, y, x]:.6f}"
        )
    worst.level_diff = max(worst.level_diff, int(levels.max()))
    worst.within_one = min(worst.within_one, within_one)
    if tol.max_abs is not None:
        failed = diff.max() > tol.max_abs
    else:
        failed = levels.max() > tol.max_levels or within_one < tol.min_within_one
    if failed:
        raise VerificationError(
            f"{what} is out of tolerance ({tol.describe()}): max |diff| {worst.abs_diff:.3g}, "
            f"max {worst.level_diff} uint8 levels, {within_one:.3%} of pixels within 1 level; "
            f"worst at {worst.where}"
        )


def _styled_row(m: ModelMetadata, i: int) -> dict[str, float | int]:
    """Row i's truncation psi and mixing layer in the "styled" check: every combination of a
    few psi values and every layer from 0 (all z_mix) to style_layers (no mixing) shows up."""
    return {"truncation": PSI_CYCLE[i % len(PSI_CYCLE)], "mix_layer": i % (m.style_layers + 1)}


def case_feeds(
    m: ModelMetadata, seeds: list[int], labels: np.ndarray, *, styled: bool
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The feeds of one batch, built by `inputs.feeds_for_seeds`, and a note per row."""
    y = labels if m.conditional else None
    if not styled:
        return inputs.feeds_for_seeds(m, seeds, y), [""] * len(seeds)
    rows, notes = [], []
    for i, seed in enumerate(seeds):  # one row at a time: psi and mix_layer vary per row
        row = _styled_row(m, i)
        rows.append(
            inputs.feeds_for_seeds(
                m,
                [seed],
                None if y is None else y[i : i + 1],
                truncation=row["truncation"],
                mix_seeds=[seed + MIX_SEED_OFFSET],
                mix_layer=row["mix_layer"],
            )
        )
        notes.append(f", psi {row['truncation']}, mixing from layer {row['mix_layer']}")
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}, notes


def verify(
    run: Runner,
    reference: Runner,
    *,
    metadata: ModelMetadata,
    batch_sizes: Sequence[int],
    tolerance: Tolerance,
    what: str,
) -> dict[str, float]:
    """Check ``run`` against ``reference`` and for batch invariance; return the figures.

    Raises VerificationError naming the worst case.
    """
    m = metadata
    worst = _Worst()
    styles = (False, True) if m.truncation_mode == "w" or m.style_layers else (False,)
    for batch in batch_sizes:
        for seeds, labels in _cases(m.num_classes, batch):
            for styled in styles:
                feeds, notes = case_feeds(m, seeds, labels, styled=styled)

                def describe(
                    i: int,
                    seeds: list[int] = seeds,
                    labels: np.ndarray = labels,
                    batch: int = batch,
                    notes: list[str] = notes,
                ) -> str:
                    label = int(labels[i]) if m.conditional else "-"
                    return f"batch size {batch}, seed {seeds[i]}, class {label}{notes[i]}"

                got = run(feeds)
                _compare(got, reference(feeds), tolerance, worst, describe, what)
                if batch > 1:
                    _check_invariance(run, got, feeds, tolerance, describe, what)
    return {
        "max_abs_diff": worst.abs_diff,
        "max_level_diff": worst.level_diff,
        "min_within_one_level": worst.within_one,
        "batch_sizes": list(batch_sizes),
    }


def _check_invariance(
    run: Runner,
    batched: np.ndarray,
    feeds: dict[str, np.ndarray],
    tolerance: Tolerance,
    describe: Callable[[int], str],
    what: str,
) -> None:
    n = len(batched)
    alone = np.concatenate([run({k: v[i : i + 1] for k, v in feeds.items()}) for i in range(n)])
    a, b = to_uint8(alone).astype(np.int16), to_uint8(batched).astype(np.int16)
    levels = np.abs(a - b)
    if tolerance.max_abs is not None:
        broken = levels.max() > 0  # FP32 on the CPU: identical pixels
    else:
        broken = (
            levels.max() > tolerance.max_levels
            or float((levels <= 1).mean()) < tolerance.min_within_one
        )
    if broken:
        i = int(levels.reshape(n, -1).max(axis=1).argmax())
        raise VerificationError(
            f"{what} is not batch invariant: {describe(i)} computed alone differs from the same "
            f"seed inside the batch by up to {int(levels[i].max())} uint8 levels"
        )
