"""Several models in one server, conditional and unconditional, addressed by name."""

from __future__ import annotations

import pathlib

import grpc
import pytest

from conftest import generator_stub
from ganserve.v1 import generator_pb2 as pb


@pytest.fixture(scope="module")
def server(two_model_repository: pathlib.Path, start_server_module):
    return start_server_module(two_model_repository, default_model="tiny")


def test_unconditional_model_generates_without_class(server) -> None:
    with generator_stub(server.target) as stub:
        response = stub.Generate(pb.GenerateRequest(seed=3, model="plain"), timeout=30)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(model="plain"), timeout=30)
    assert response.model == "plain" and response.class_label == -1
    assert info.num_classes == 0 and list(info.class_names) == []


def test_unconditional_model_rejects_any_class_label(server) -> None:
    with generator_stub(server.target) as stub, pytest.raises(grpc.RpcError) as info:
        stub.Generate(pb.GenerateRequest(seed=3, model="plain", class_label=0), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "class_label must be unset: model 'plain' is unconditional"


def test_unconditional_model_batches_without_class_and_names_a_labelled_item(server) -> None:
    items = [pb.BatchItem(seed=s) for s in (1, 2, 3)]
    with generator_stub(server.target) as stub:
        reply = stub.GenerateBatch(pb.GenerateBatchRequest(items=items, model="plain"), timeout=30)
        items[2].class_label = 0
        with pytest.raises(grpc.RpcError) as info:
            stub.GenerateBatch(pb.GenerateBatchRequest(items=items, model="plain"), timeout=30)
    assert [(r.seed, r.class_label, r.model) for r in reply.images] == [
        (1, -1, "plain"),
        (2, -1, "plain"),
        (3, -1, "plain"),
    ]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        "items[2].class_label must be unset: model 'plain' is unconditional"
    )


def test_empty_model_name_uses_the_configured_default(server) -> None:
    with generator_stub(server.target) as stub:
        response = stub.Generate(pb.GenerateRequest(seed=3, class_label=2), timeout=30)
    assert response.model == "tiny"


def test_not_found_lists_every_model(server) -> None:
    with generator_stub(server.target) as stub, pytest.raises(grpc.RpcError) as info:
        stub.Generate(pb.GenerateRequest(seed=3, model="digits", class_label=1), timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "model 'digits' not found; available: plain, tiny"
