"""The committed stubs are exactly what proto/generate.py makes from the committed .proto."""

from __future__ import annotations

import importlib.util
import pathlib

from conftest import ROOT

PROTO = ROOT / "proto"


def _generator():
    spec = importlib.util.spec_from_file_location("generate", PROTO / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_the_proto(tmp_path: pathlib.Path) -> None:
    fresh = _generator().generate(tmp_path)
    assert fresh, "the generator wrote no stubs"
    stale = []
    for path in fresh:
        committed = PROTO / path.relative_to(tmp_path)
        if not committed.is_file() or committed.read_bytes() != path.read_bytes():
            stale.append(str(committed.relative_to(ROOT)))
    assert not stale, f"stale stubs {stale}: run `make proto` and commit the result"


def test_contract_names_are_unchanged() -> None:
    from ganserve.v1 import generator_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["Generator"]
    assert service.full_name == "ganserve.v1.Generator"
    assert [m.name for m in service.methods][:2] == ["Generate", "GetModelInfo"]
    request = {f.name: f.number for f in pb.GenerateRequest.DESCRIPTOR.fields}
    assert {k: request[k] for k in ("seed", "class_label", "model", "encoding")} == {
        "seed": 1,
        "class_label": 2,
        "model": 3,
        "encoding": 4,
    }
    response = {f.name: f.number for f in pb.GenerateResponse.DESCRIPTOR.fields}
    assert response == {
        "image": 1,
        "encoding": 2,
        "height": 3,
        "width": 4,
        "channels": 5,
        "seed": 6,
        "class_label": 7,
        "model": 8,
        "model_version": 9,
    }
    assert dict(pb.ImageEncoding.items()) == {
        "IMAGE_ENCODING_PNG": 0,
        "IMAGE_ENCODING_RAW_UINT8": 1,
    }
    info = [f.name for f in pb.ModelInfo.DESCRIPTOR.fields][:10]
    assert info == [
        "name",
        "version",
        "latent_dim",
        "num_classes",
        "height",
        "width",
        "channels",
        "class_names",
        "max_batch_size",
        "backend",
    ]
