"""The verifier catches what it must: tampered weights, batch dependence, uint8 drift."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from conftest import BUNDLED_REPOSITORY
from ganserve.export.verify import FP32, REDUCED_PRECISION, VerificationError, _cases, verify
from ganserve.serve.metadata import ModelMetadata

VERSION = BUNDLED_REPOSITORY / "digits" / "1"
ONNX = VERSION / "model.onnx"
CHECK = dict(metadata=ModelMetadata.read(VERSION / "metadata.json"), batch_sizes=(1, 7, 16))


def runner(path: pathlib.Path):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)[0]


def test_identical_model_passes_with_zero_difference() -> None:
    report = verify(runner(ONNX), runner(ONNX), tolerance=FP32, what="same", **CHECK)
    assert report["max_abs_diff"] == 0.0 and report["batch_sizes"] == [1, 7, 16]


def test_one_tampered_weight_in_the_onnx_file_is_caught(tmp_path: pathlib.Path) -> None:
    model = onnx.load(str(ONNX))
    target = max(model.graph.initializer, key=lambda t: np.prod(t.dims))  # a conv weight
    weights = numpy_helper.to_array(target).copy()
    weights.flat[0] += 0.5
    target.CopyFrom(numpy_helper.from_array(weights, target.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, str(tampered))
    with pytest.raises(VerificationError, match=r"out of tolerance \(max \|diff\| <= 0.0001\)"):
        verify(runner(tampered), runner(ONNX), tolerance=FP32, what="tampered", **CHECK)


def test_batch_dependent_output_is_caught_as_broken_invariance() -> None:
    base = runner(ONNX)

    def batch_dependent(feeds):
        return np.clip(base(feeds) + 0.02 * (len(feeds["z"]) > 1), -1, 1)

    with pytest.raises(VerificationError, match="not batch invariant: batch size 7, seed 7000"):
        verify(batch_dependent, batch_dependent, tolerance=FP32, what="faulty", **CHECK)


def shifted(base, levels: int, share: float):
    """A runner whose first `share` of pixels are `levels` uint8 levels above `base`'s."""

    def run(feeds):
        out = base(feeds).copy()
        flat = out.reshape(len(out), -1)
        count = max(1, int(share * flat.shape[1]))
        pixels = np.rint((flat[:, :count] + 1) * 127.5)
        flat[:, :count] = np.clip(pixels + levels, 0, 255) / 127.5 - 1
        return out

    return run


@pytest.mark.parametrize(
    ("levels", "share", "ok"),
    [
        (1, 1.0, True),  # every pixel one level off: allowed
        (5, 1e-4, False),  # a single pixel five levels off: never more than 4
        (2, 0.01, False),  # 1% of pixels two levels off: fewer than 99.9% within one
    ],
)
def test_reduced_precision_tolerance_in_uint8_levels(levels: int, share: float, ok: bool) -> None:
    base = runner(ONNX)
    run = shifted(base, levels, share)
    if ok:
        verify(run, base, tolerance=REDUCED_PRECISION, what="fp16", **CHECK)
    else:
        with pytest.raises(VerificationError, match="uint8 levels"):
            verify(run, base, tolerance=REDUCED_PRECISION, what="fp16", **CHECK)


@pytest.mark.parametrize("batch", [1, 3, 7, 10, 64])
def test_every_class_is_covered_at_every_batch_size(batch: int) -> None:
    cases = _cases(10, batch)
    labels = np.concatenate([labels for _, labels in cases])
    assert set(labels.tolist()) == set(range(10))
    assert all(len(seeds) == batch for seeds, _ in cases)
