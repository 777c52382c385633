"""ONNX helpers: the FP16 copy of a model checks and runs like the FP32 one."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ganserve.export import onnx_export


def _upsampling_model(path: pathlib.Path, constants: str) -> None:
    """x (1, 1, 2, 2) -> Resize x2 -> * 0.5, the scale and the factor from Constant nodes: the
    shape of the unoptimised exporter's upsampling in a stylegan. ``constants`` is how the
    Constant nodes hold their values: "value_floats" (and value_float), or "value" tensors."""
    if constants == "value_floats":
        scales = helper.make_node("Constant", [], ["scales"], value_floats=[1.0, 1.0, 2.0, 2.0])
        half = helper.make_node("Constant", [], ["half"], value_float=0.5)
    else:
        array = np.array([1, 1, 2, 2], np.float32)
        scales = helper.make_node("Constant", [], ["scales"], value=numpy_helper.from_array(array))
        half = helper.make_node(
            "Constant", [], ["half"], value=numpy_helper.from_array(np.array(0.5, np.float32))
        )
    graph = helper.make_graph(
        [
            scales,
            half,
            helper.make_node("Resize", ["x", "", "scales"], ["up"], mode="nearest"),
            helper.make_node("Mul", ["up", "half"], ["y"]),
        ],
        "upsample",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.save(onnx.shape_inference.infer_shapes(model), str(path))


def weight_types(model: onnx.ModelProto) -> set[int]:
    """The element types of the graph's initialisers and Constant values; a value_float(s)
    attribute is an FP32 value."""
    types = {t.data_type for t in model.graph.initializer}
    for node in model.graph.node:
        for attr in node.attribute if node.op_type == "Constant" else []:
            if attr.name == "value":
                types.add(attr.t.data_type)
            elif attr.name in ("value_float", "value_floats"):
                types.add(TensorProto.FLOAT)
    return types


def io_types(model: onnx.ModelProto) -> list[tuple[str, int]]:
    return [
        (v.name, v.type.tensor_type.elem_type) for v in [*model.graph.input, *model.graph.output]
    ]


@pytest.mark.parametrize("constants", ["value_floats", "value"])
def test_fp16_copy_of_float_constants_in_any_form_checks_and_matches(
    constants: str, tmp_path: pathlib.Path
) -> None:
    src, dst = tmp_path / "model.onnx", tmp_path / "model.fp16.onnx"
    _upsampling_model(src, constants)
    onnx_export.to_fp16(src, dst)
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)

    def run(model: pathlib.Path) -> np.ndarray:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]

    np.testing.assert_allclose(run(dst), run(src), atol=1e-3)
    # The copy really is FP16 inside, and is still fed and read in FP32 (keep_io_types).
    fp32, fp16 = onnx.load(str(src)), onnx.load(str(dst))
    assert weight_types(fp32) == {TensorProto.FLOAT}
    assert weight_types(fp16) == {TensorProto.FLOAT16}
    assert io_types(fp16) == io_types(fp32) == [("x", TensorProto.FLOAT), ("y", TensorProto.FLOAT)]


def test_fp16_conversion_that_does_not_check_is_a_conversion_error(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "model.onnx"
    _upsampling_model(src, "value")

    def refuse(model, full_check=False):
        raise onnx.checker.ValidationError("planted: the converted graph is inconsistent")

    monkeypatch.setattr(onnx_export.onnx.checker, "check_model", refuse)
    with pytest.raises(onnx_export.ConversionError, match="the FP16 model does not check: planted"):
        onnx_export.to_fp16(src, tmp_path / "model.fp16.onnx")
    assert not (tmp_path / "model.fp16.onnx").exists()
