"""The native TensorRT engine's own code, and how the model loader picks and falls back between
backends, run in CI against fake tensorrt and cuda-python modules (fake_tensorrt.py: host
memory, and the model's ONNX file on ONNX Runtime's CPU provider as the plan).

These check what ganserve does around TensorRT: plan and GPU matching, buffers sized and
freed, inputs staged and cast, the output copied back, and the choice of backend under
``auto``. TensorRT itself is tested on a GPU by test_gpu_backends.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import pathlib
import shutil

import fake_tensorrt
import numpy as np
import pytest
from fake_tensorrt import Plan, Tensor, TensorIOMode

from conftest import BUNDLED_REPOSITORY, make_config
from ganserve.serve import backends
from ganserve.serve.backends import Backend, EngineOptions, tensorrt
from ganserve.serve.backends.cpu import OnnxCpuEngine
from ganserve.serve.errors import ModelLoadError
from ganserve.serve.inputs import feeds_for_seeds
from ganserve.serve.metadata import METADATA_FILE, MODEL_FILE, PLAN_FILE, ModelMetadata
from ganserve.serve.metrics import ServerMetrics
from ganserve.serve.models import ModelManager

SOURCE = BUNDLED_REPOSITORY / "digits" / "1"
METADATA = ModelMetadata.read(SOURCE / METADATA_FILE)
RECORD = {"version": "10.99.0", "gpu": "Fake GPU"}


def _version(root: pathlib.Path, record: dict | None = None) -> pathlib.Path:
    """digits v1 in ``root``, with a model.plan built (says its record) for ``record``."""
    folder = root / "digits" / "1"
    folder.mkdir(parents=True)
    shutil.copy(SOURCE / MODEL_FILE, folder / MODEL_FILE)
    extra = {**METADATA.extra, "tensorrt": record or RECORD}
    dataclasses.replace(METADATA, extra=extra).write(folder / METADATA_FILE)
    (folder / PLAN_FILE).write_bytes(b"a plan")
    return folder


def _plan(
    folder: pathlib.Path,
    label: type = np.int64,
    output: type = np.float32,
    max_batch: int = 64,
) -> Plan:
    """A plan of the digits model as export-gan builds it, with these I/O types and batch."""
    return Plan(
        str(folder / MODEL_FILE),
        {
            "z": Tensor(TensorIOMode.INPUT, (-1, METADATA.latent_dim), np.float32, (1, max_batch)),
            "label": Tensor(TensorIOMode.INPUT, (-1,), label, (1, max_batch)),
            "image": Tensor(TensorIOMode.OUTPUT, (-1, 1, 32, 32), output),
        },
    )


def _engine(folder: pathlib.Path, max_batch: int = 64) -> tensorrt.TensorRTEngine:
    metadata = ModelMetadata.read(folder / METADATA_FILE)  # with the plan's record
    return tensorrt.TensorRTEngine(folder, metadata, EngineOptions(max_batch_size=max_batch))


def _feeds(n: int) -> dict[str, np.ndarray]:
    return feeds_for_seeds(METADATA, range(500, 500 + n), np.arange(n) % METADATA.num_classes)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> fake_tensorrt.FakeTensorRT:
    return fake_tensorrt.install(monkeypatch, gpus=("Fake GPU", "Other GPU"))


@pytest.mark.parametrize(
    ("label", "output", "max_abs"),
    [(np.int64, np.float32, 0.0), (np.int32, np.float32, 0.0), (np.int64, np.float16, 1e-3)],
    ids=["int64-fp32", "int32-labels", "fp16-output"],
)
def test_engine_gives_the_cpu_engines_images_and_frees_its_buffers(
    tmp_path: pathlib.Path, fake: fake_tensorrt.FakeTensorRT, label: type, output: type, max_abs
) -> None:
    folder = _version(tmp_path)
    fake.plan = _plan(folder, label, output)
    engine = _engine(folder)
    reference = OnnxCpuEngine(folder, METADATA, EngineOptions(intra_op_threads=1))
    assert fake.cuda.live  # a device and a pinned buffer per tensor
    for n in (1, 7, 64, 3):  # a smaller batch after a larger one reads no stale rows
        images = engine.run(_feeds(n))
        assert images.dtype == np.float32 and images.shape == (n, 1, 32, 32)
        assert np.abs(images - reference.run(_feeds(n))).max() <= max_abs
    engine.close()
    engine.close()
    assert not fake.cuda.live
    with pytest.raises(RuntimeError, match="is closed"):
        engine.run(_feeds(1))


def test_engine_ignores_a_feed_the_model_does_not_take(
    tmp_path: pathlib.Path, fake: fake_tensorrt.FakeTensorRT
) -> None:
    folder = _version(tmp_path)
    fake.plan = _plan(folder)
    engine = _engine(folder, max_batch=8)
    feeds = _feeds(4)
    extra = {"noise": np.zeros((4, 9), np.float32), **feeds}  # first: staged first if used
    np.testing.assert_array_equal(engine.run(extra), engine.run(feeds))
    engine.close()


def test_a_failed_allocation_is_one_line_and_frees_what_was_allocated(
    tmp_path: pathlib.Path, fake: fake_tensorrt.FakeTensorRT
) -> None:
    folder = _version(tmp_path)
    fake.plan = _plan(folder)
    fake.cuda.allocations_left = 3  # z's two buffers, then label's device buffer
    with pytest.raises(ModelLoadError, match=r"cudaMallocHost\(label\) failed: .*Allocation"):
        _engine(folder)
    assert not fake.cuda.live


def test_a_plan_is_matched_against_the_gpu_the_engine_runs_on(
    tmp_path: pathlib.Path, fake: fake_tensorrt.FakeTensorRT
) -> None:
    """The engine runs on the first visible GPU: a plan built for the second is refused."""
    other = _version(tmp_path / "other", {"version": "10.99.0", "gpu": "Other GPU"})
    assert "built for GPU model 'Other GPU'" in tensorrt.unavailable(other)
    assert tensorrt.unavailable(_version(tmp_path / "here")) is None


def test_a_plan_of_another_tensorrt_version_is_refused_naming_both(
    tmp_path: pathlib.Path, fake: fake_tensorrt.FakeTensorRT
) -> None:
    folder = _version(tmp_path, {"version": "0.0.0", "gpu": "Fake GPU"})
    reason = tensorrt.unavailable(folder)
    assert "built with TensorRT 0.0.0 but this machine has TensorRT 10.99.0" in reason


def _recorded(root: pathlib.Path) -> pathlib.Path:
    """A version whose record carries the hashes of its plan and ONNX, as export-gan writes."""
    folder = _version(root)
    record = {
        **RECORD,
        "plan_sha256": hashlib.sha256((folder / PLAN_FILE).read_bytes()).hexdigest(),
        "onnx_sha256": hashlib.sha256((folder / MODEL_FILE).read_bytes()).hexdigest(),
    }
    extra = {**METADATA.extra, "tensorrt": record}
    dataclasses.replace(METADATA, extra=extra).write(folder / METADATA_FILE)
    return folder


def test_a_plan_or_onnx_replaced_after_the_export_is_refused(
    tmp_path: pathlib.Path, fake: fake_tensorrt.FakeTensorRT
) -> None:
    """Both files' SHA-256 is recorded at export: a plan copied in from another export, or a
    model.onnx replaced beside the plan, would serve under a record that is not theirs."""
    folder = _recorded(tmp_path / "as-exported")
    fake.plan = _plan(folder)
    _engine(folder).close()
    replaced = _recorded(tmp_path / "plan")
    (replaced / PLAN_FILE).write_bytes(b"another plan")
    with pytest.raises(ModelLoadError, match=r"is not the plan metadata\.json records"):
        _engine(replaced)
    replaced = _recorded(tmp_path / "onnx")
    with (replaced / MODEL_FILE).open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelLoadError, match=r"was built from another model\.onnx"):
        _engine(replaced)
    assert not fake.cuda.live


def test_auto_serves_on_the_next_backend_when_the_plan_was_replaced(
    tmp_path: pathlib.Path, fake: fake_tensorrt.FakeTensorRT, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _recorded(tmp_path)
    fake.plan = _plan(folder)
    (folder / PLAN_FILE).write_bytes(b"another plan")
    with caplog.at_level(logging.WARNING):
        assert _served_backend(tmp_path, backend=Backend.AUTO) is Backend.ONNXRUNTIME_CPU
    assert "is not the plan metadata.json records" in caplog.text


# --- choosing the backend ---------------------------------------------------------------------


def _served_backend(repo: pathlib.Path, **overrides: object) -> Backend:
    async def start() -> Backend:
        manager = ModelManager(make_config(repo, **overrides), ServerMetrics(max_batch_size=64))
        await manager.start()
        try:
            return manager.resolve("digits").backend
        finally:
            await manager.close(0)

    return asyncio.run(start())


def test_auto_serves_a_plan_built_for_this_gpu(
    tmp_path: pathlib.Path, fake: fake_tensorrt.FakeTensorRT
) -> None:
    fake.plan = _plan(_version(tmp_path))
    assert _served_backend(tmp_path, backend=Backend.AUTO) is Backend.TENSORRT


def test_auto_goes_on_to_the_next_backend_when_the_plan_does_not_open(
    tmp_path: pathlib.Path, fake: fake_tensorrt.FakeTensorRT, caplog: pytest.LogCaptureFixture
) -> None:
    """A plan whose profile stops below the server's batch passes the cheap checks that
    pick the backend, and fails only when opened: auto then serves on the next one."""
    fake.plan = _plan(_version(tmp_path), max_batch=32)
    with caplog.at_level(logging.WARNING):
        assert _served_backend(tmp_path, backend=Backend.AUTO) is Backend.ONNXRUNTIME_CPU
    assert "auto backend: tensorrt failed to load" in caplog.text
    assert "accepts batch sizes 1..32 but the server sends 1..64" in caplog.text
    assert "trying onnxruntime-cpu" in caplog.text


def test_an_explicit_backend_that_does_not_open_fails_the_model(
    tmp_path: pathlib.Path, fake: fake_tensorrt.FakeTensorRT
) -> None:
    fake.plan = _plan(_version(tmp_path), max_batch=32)
    with pytest.raises(ModelLoadError, match=r"accepts batch sizes 1\.\.32"):
        _served_backend(tmp_path, backend=Backend.TENSORRT)


def test_auto_warns_about_a_plan_it_cannot_use(
    tmp_path: pathlib.Path, fake: fake_tensorrt.FakeTensorRT, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _version(tmp_path, {"version": "0.0.0", "gpu": "Fake GPU"})
    with caplog.at_level(logging.WARNING):
        assert backends.candidates(Backend.AUTO, folder) == [Backend.ONNXRUNTIME_CPU]
    assert "not using model.plan" in caplog.text and "TensorRT 0.0.0" in caplog.text


def test_auto_without_a_plan_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert backends.candidates(Backend.AUTO, SOURCE)[-1] is Backend.ONNXRUNTIME_CPU
    assert "model.plan" not in caplog.text


def test_no_new_instance_is_built_from_files_changed_since_the_load(
    tmp_path: pathlib.Path,
) -> None:
    """A replacement for a hung instance opens the version's files again: once they changed
    on disk (export-gan --force), it would serve other weights under the same version."""
    folder = tmp_path / "digits" / "1"
    folder.mkdir(parents=True)
    for name in (MODEL_FILE, METADATA_FILE):
        shutil.copy(SOURCE / name, folder / name)

    async def spawn_twice() -> None:
        config = make_config(tmp_path, backend=Backend.ONNXRUNTIME_CPU)
        manager = ModelManager(config, ServerMetrics(max_batch_size=64))
        await manager.start()
        try:
            spawn = manager.resolve("digits").batcher._spawn
            spawn().close()  # the files are as loaded
            stat = (folder / MODEL_FILE).stat()
            os.utime(folder / MODEL_FILE, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
            with pytest.raises(ModelLoadError, match="changed on disk since it was loaded"):
                spawn()
        finally:
            await manager.close(0)

    asyncio.run(spawn_twice())
