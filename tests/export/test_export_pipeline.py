"""export-gan writes a verified, self-describing model version, or nothing at all."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import json
import os
import pathlib
import re
import shutil
import signal
import tempfile
import time

import numpy as np
import onnx
import pytest
import torch
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from ganserve.export import onnx_export, pipeline, publish, tensorrt_build
from ganserve.export.pipeline import ExportConfig, ExportError, TensorRTMode, export_checkpoint
from ganserve.serve.config import ModelConfig
from ganserve.serve.errors import ModelLoadError
from ganserve.serve.latent import LATENT_SCHEME
from ganserve.serve.metadata import ModelMetadata
from ganserve.train import checkpoint

# Why TensorRT cannot build here (None on a machine with it and a GPU, where the export also
# writes model.plan and checks the FP16 copy on CUDA).
NO_TENSORRT = tensorrt_build.unavailable()
FLOAT, FLOAT16, INT64 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT64


def io_types(model: onnx.ModelProto) -> list[tuple[str, int]]:
    return [
        (v.name, v.type.tensor_type.elem_type) for v in [*model.graph.input, *model.graph.output]
    ]


@pytest.fixture(scope="module")
def exported(tiny_checkpoint: pathlib.Path, tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("repo")
    config = ExportConfig(repository=repo, name="tiny", fp16_onnx=True, max_batch=16)
    return repo, export_checkpoint(tiny_checkpoint, config)


def test_export_writes_fp32_and_fp16_onnx_and_metadata(exported) -> None:
    repo, result = exported
    assert result.version.path == repo / "tiny" / "1"
    plan = [] if NO_TENSORRT else ["model.plan"]
    assert sorted(p.name for p in result.version.path.iterdir()) == [
        "metadata.json",
        "model.fp16.onnx",
        "model.onnx",
        *plan,
    ]
    fp32 = onnx.load(str(result.version.path / "model.onnx"))
    fp16 = onnx.load(str(result.version.path / "model.fp16.onnx"))
    # Every weight of the FP16 copy is FP16; it is fed and read like the FP32 one (casts
    # inside, keep_io_types), so a server can swap one for the other.
    assert {t.data_type for t in fp32.graph.initializer} == {FLOAT, INT64}
    assert {t.data_type for t in fp16.graph.initializer} == {FLOAT16, INT64}
    assert not [n.name for n in fp16.graph.node if n.op_type == "Constant"]  # optimised away
    assert io_types(fp16) == io_types(fp32) == [("z", FLOAT), ("label", INT64), ("image", FLOAT)]


@pytest.mark.skipif(not NO_TENSORRT, reason="TensorRT and a GPU are present: nothing is skipped")
def test_missing_tensorrt_is_one_note_not_an_error(exported) -> None:
    _, result = exported
    (note,) = result.notes
    assert note.startswith("TensorRT engine skipped: ")


@pytest.mark.skipif(bool(NO_TENSORRT), reason=f"needs TensorRT and a GPU: {NO_TENSORRT}")
def test_the_plan_record_holds_the_sha256_of_the_plan_and_of_the_onnx_it_came_from(
    exported,
) -> None:
    """What the server checks the files against before it serves a plan."""
    _, result = exported
    folder = result.version.path
    record = json.loads((folder / "metadata.json").read_text())["extra"]["tensorrt"]
    assert record["plan_sha256"] == checkpoint.file_sha256(folder / "model.plan")
    assert record["onnx_sha256"] == checkpoint.file_sha256(folder / "model.onnx")


def test_metadata_describes_model_engines_and_provenance(exported, tiny_checkpoint) -> None:
    _, result = exported
    meta = json.loads((result.version.path / "metadata.json").read_text())
    assert (meta["name"], meta["version"], meta["latent_dim"], meta["num_classes"]) == (
        "tiny",
        "1",
        16,
        10,
    )
    assert (meta["height"], meta["width"], meta["channels"]) == (32, 32, 1)
    assert meta["value_range"] == [-1.0, 1.0] and meta["latent_scheme"] == LATENT_SCHEME
    assert meta["class_names"] == [str(i) for i in range(10)]
    assert meta["source_checkpoint_sha256"] == checkpoint.file_sha256(tiny_checkpoint)
    assert meta["onnx_opset"] == 18 and "train_seconds" in meta["training_metrics"]
    assert {"torch", "onnx", "onnxruntime"} <= set(meta["tool_versions"])
    fp32, fp16 = meta["extra"]["onnx"], meta["extra"]["onnx_fp16"]
    assert (fp32["precision"], fp32["batch"]) == ("fp32", "dynamic")
    assert fp32["verification"]["batch_sizes"] == [1, 7, 16]
    assert fp32["verification"]["max_abs_diff"] <= 1e-4
    assert fp16["precision"] == "fp16"
    assert fp16["verified_on"] in ("onnxruntime-cpu", "onnxruntime-cuda")
    assert fp16["verification"]["max_level_diff"] <= 4
    assert fp16["verification"]["min_within_one_level"] >= 0.999


def test_metadata_round_trips_through_file_and_onnx_props(exported) -> None:
    _, result = exported
    path = result.version.path
    from_file = ModelMetadata.read(path / "metadata.json")
    assert ModelMetadata.from_dict(from_file.to_dict()) == from_file
    for name in ("model.onnx", "model.fp16.onnx"):
        assert onnx_export.read_embedded_metadata(path / name) == from_file.to_dict()


def test_onnx_is_checker_clean_single_file_with_dynamic_batch(exported) -> None:
    _, result = exported
    model = onnx.load(str(result.version.onnx_path))
    onnx.checker.check_model(model, full_check=True)
    inputs = {i.name: i for i in model.graph.input}
    assert set(inputs) == {"z", "label"}
    assert inputs["z"].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    assert inputs["z"].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert inputs["label"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    (output,) = model.graph.output
    assert output.name == "image" and output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def test_fp16_variant_is_served_within_one_level(exported, start_server) -> None:
    from ganserve.client import GeneratorClient, ImageEncoding

    repo, _ = exported
    fp32 = start_server(repo, models={"tiny": ModelConfig(precision="fp32")})
    fp16 = start_server(repo, models={"tiny": ModelConfig(precision="fp16")})
    with GeneratorClient(fp32.target) as a, GeneratorClient(fp16.target) as b:
        for seed in range(5):
            x = a.generate(seed, seed % 10, encoding=ImageEncoding.RAW_UINT8).pixels
            y = b.generate(seed, seed % 10, encoding=ImageEncoding.RAW_UINT8).pixels
            assert np.abs(x.astype(int) - y.astype(int)).max() <= 1


@pytest.mark.parametrize(
    ("data", "model"),
    [("digits-train", "digits"), ("faces-train", "faces"), ("my photos-train", "my photos")],
)
def test_a_model_is_named_after_its_training_data_by_default(
    tiny_checkpoint: pathlib.Path, tmp_path: pathlib.Path, data: str, model: str
) -> None:
    """Named "digits" whatever the data, a faces model became the newest version of the
    digits model, and its clients' class labels were refused from the next start."""
    ckpt = checkpoint.load(tiny_checkpoint)
    ckpt["dataset"]["name"] = data
    checkpoint.save(ckpt, tmp_path / "m.pt")
    config = ExportConfig(repository=tmp_path / "repo", max_batch=8, tensorrt=TensorRTMode.OFF)
    result = export_checkpoint(tmp_path / "m.pt", config)
    assert result.version.path == tmp_path / "repo" / model / "1"
    assert ModelMetadata.read(result.version.path / "metadata.json").name == model


@pytest.mark.parametrize(
    ("dataset", "match"),
    [
        (None, "does not record the name of its training data: name the model with --name"),
        ({"name": "-train"}, "does not record the name of its training data"),
        (
            {"name": ".hidden-train"},
            r"training data's name cannot name the model \(name '\.hidden'",
        ),
    ],
    ids=["no-record", "empty", "hidden-folder"],
)
def test_without_a_usable_data_name_the_export_asks_for_one(
    tiny_checkpoint: pathlib.Path, tmp_path: pathlib.Path, dataset: dict | None, match: str
) -> None:
    ckpt = checkpoint.load(tiny_checkpoint)
    if dataset is None:
        del ckpt["dataset"]
    else:
        ckpt["dataset"] = {**ckpt["dataset"], **dataset}
    checkpoint.save(ckpt, tmp_path / "m.pt")
    config = ExportConfig(repository=tmp_path / "repo", max_batch=8, tensorrt=TensorRTMode.OFF)
    with pytest.raises(ExportError, match=match):
        export_checkpoint(tmp_path / "m.pt", config)
    assert not (tmp_path / "repo").exists()


def test_next_export_is_the_next_version_and_existing_needs_force(
    exported,
    tiny_checkpoint,
) -> None:
    repo, _ = exported
    config = ExportConfig(repository=repo, name="tiny", max_batch=8, tensorrt=TensorRTMode.OFF)
    assert export_checkpoint(tiny_checkpoint, config).version.version == 2
    with pytest.raises(ExportError, match="already exists; pass --version N for a new one"):
        export_checkpoint(tiny_checkpoint, dataclasses.replace(config, version=1))
    replaced = export_checkpoint(
        tiny_checkpoint, dataclasses.replace(config, version=2, force=True)
    )
    assert replaced.version.version == 2 and not replaced.notes


def test_tensorrt_requested_but_unavailable_fails_and_writes_nothing(
    tiny_checkpoint: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    config = ExportConfig(repository=tmp_path, name="tiny", tensorrt=TensorRTMode.ON)
    with pytest.raises(ExportError, match="--tensorrt on was requested but cannot build here"):
        export_checkpoint(tiny_checkpoint, config)
    assert list(tmp_path.rglob("*")) == []


def test_tampered_weight_fails_loudly_with_the_worst_case_and_writes_nothing(
    tiny_checkpoint: pathlib.Path,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_export = onnx_export.export_onnx

    def export_tampered(generator, path, **kwargs):
        tampered = checkpoint.build_generator(checkpoint.load(tiny_checkpoint))
        with torch.no_grad():
            tampered.net[0].weight[0, 0, 0, 0] += 0.5  # one weight of the first layer
        real_export(tampered, path, **kwargs)

    monkeypatch.setattr(pipeline.onnx_export, "export_onnx", export_tampered)
    with pytest.raises(ExportError) as info:
        export_checkpoint(tiny_checkpoint, ExportConfig(repository=tmp_path, name="tiny"))
    message = str(info.value)
    assert message.startswith("verification failed, nothing written: model.onnx (FP32) is out of")
    assert re.search(r"worst at batch size 1, seed 100\d, class \d, pixel \(c=0, y=\d+", message)
    assert list(tmp_path.rglob("*")) == []


def test_export_without_the_optimiser_still_verifies(
    tiny_checkpoint: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    config = ExportConfig(
        repository=tmp_path, name="tiny", optimize=False, max_batch=8, tensorrt=TensorRTMode.OFF
    )
    meta = export_checkpoint(tiny_checkpoint, config).version.metadata
    assert meta.extra["onnx"]["optimized"] is False


def _no_work(*args, **kwargs) -> None:
    raise AssertionError("the export started before its destination was checked")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("repository-under-a-file", "cannot write {t}/afile/sub/tiny/1: {t}/afile is a file"),
        ("repository-cannot-be-made", "cannot write /proc/repo/tiny/1: cannot create folder"),
        ("name-is-a-file", "cannot write {t}/repo/tiny/1: {t}/repo/tiny is a file, not a folder"),
        ("version-is-a-file", "cannot write {t}/repo/tiny/1: it is a file, not a version folder"),
    ],
)
def test_unwritable_destination_is_refused_before_the_work_and_writes_nothing(
    case: str,
    message: str,
    tiny_checkpoint: pathlib.Path,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if case == "repository-cannot-be-made" and not pathlib.Path("/proc/self").is_dir():
        pytest.skip("needs Linux's /proc, where no folder can be made")
    (tmp_path / "afile").write_text("")
    repo = {
        "repository-under-a-file": tmp_path / "afile" / "sub",
        "repository-cannot-be-made": pathlib.Path("/proc/repo"),
    }.get(case, tmp_path / "repo")
    if case == "name-is-a-file":
        repo.mkdir()
        (repo / "tiny").write_text("")
    if case == "version-is-a-file":
        (repo / "tiny").mkdir(parents=True)
        (repo / "tiny" / "1").write_text("keep me")
    before = sorted(tmp_path.rglob("*"))
    monkeypatch.setattr(pipeline.onnx_export, "export_onnx", _no_work)
    config = ExportConfig(repository=repo, name="tiny", version=1, force=True)
    with pytest.raises(ExportError, match=re.escape(message.format(t=tmp_path))):
        export_checkpoint(tiny_checkpoint, config)
    assert sorted(tmp_path.rglob("*")) == before
    if case == "version-is-a-file":
        assert (repo / "tiny" / "1").read_text() == "keep me"


def test_failed_export_removes_the_folders_it_made(
    tiny_checkpoint: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(generator, path, **kwargs):
        path.write_bytes(b"half a model")
        raise KeyboardInterrupt  # Ctrl-C in the middle of the export

    monkeypatch.setattr(pipeline.onnx_export, "export_onnx", crash)
    with pytest.raises(KeyboardInterrupt):
        export_checkpoint(
            tiny_checkpoint, ExportConfig(repository=tmp_path / "new" / "repo", name="m")
        )
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_one_export_error_and_leaves_nothing(
    tiny_checkpoint: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(generator, path, **kwargs):
        path.write_bytes(b"half a model")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline.onnx_export, "export_onnx", full)
    repo = tmp_path / "repo"
    with pytest.raises(ExportError, match="nothing written: No space left on device"):
        export_checkpoint(tiny_checkpoint, ExportConfig(repository=repo, name="m"))
    assert list(repo.rglob("*")) in ([], [repo / "m"])


def test_a_name_no_file_system_takes_is_refused() -> None:
    with pytest.raises(ValueError, match=r"name 'aaaaaaaaaaaaaaaaaaaa'... is over 200 bytes"):
        ExportConfig(repository=pathlib.Path("r"), name="a" * 300)


@pytest.mark.parametrize("sizes", [(100_000_000,), (1, 9), (0,)])
def test_verify_batch_sizes_must_be_within_max_batch(sizes: tuple[int, ...]) -> None:
    with pytest.raises(
        ValueError, match=r"verify_batch_sizes must each be in 1\.\.max_batch \(8\)"
    ):
        ExportConfig(repository=pathlib.Path("r"), name="m", max_batch=8, verify_batch_sizes=sizes)


@pytest.mark.parametrize("signum", publish.STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_while_publishing_waits_for_the_version_to_be_whole(signum: int) -> None:
    """Then it reaches the handler that was there before: the export stops, published."""
    seen: list[int] = []
    previous = signal.signal(signum, lambda signum, frame: seen.append(signum))
    try:
        with publish.interrupts_held():
            os.kill(os.getpid(), signum)
            for _ in range(1000):  # Python runs handlers between bytecodes: give it some
                pass
            assert seen == [], "the signal reached the outer handler while publishing"
        assert seen == [signum]
        os.kill(os.getpid(), signum)  # the outer handler is back
        for _ in range(1000):
            pass
        assert seen == [signum, signum]
    finally:
        signal.signal(signum, previous)


def test_an_ignored_signal_stays_ignored_while_publishing() -> None:
    """SIGHUP under nohup: holding it would turn it into one delivered after the block."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with publish.interrupts_held():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_fp16_conversion_failure_is_one_clear_error_and_writes_nothing(
    tiny_checkpoint: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(src, dst):
        raise onnx_export.ConversionError("the FP16 model does not check: planted")

    monkeypatch.setattr(pipeline.onnx_export, "to_fp16", refuse)
    config = ExportConfig(
        repository=tmp_path / "repo",
        name="tiny",
        max_batch=2,
        fp16_onnx=True,
        tensorrt=TensorRTMode.OFF,
    )
    with pytest.raises(ExportError, match=r"^FP16 conversion failed, nothing written: the FP16"):
        export_checkpoint(tiny_checkpoint, config)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError("cudaMalloc(image) failed: cudaErrorMemoryAllocation"),
        ModelLoadError("model.plan: TensorRT cannot create an execution context"),
    ],
)
def test_a_gpu_step_that_fails_is_one_line_and_writes_nothing(
    tiny_checkpoint: pathlib.Path,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    failure: Exception,
) -> None:
    """A CUDA call or an engine that would not load came out of export-gan as a traceback."""

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(pipeline.tensorrt_build, "unavailable", lambda: None)
    monkeypatch.setattr(pipeline.tensorrt_build, "build_plan", fail)
    config = ExportConfig(
        repository=tmp_path / "repo", name="tiny", max_batch=2, tensorrt=TensorRTMode.ON
    )
    with pytest.raises(ExportError, match=r"^the TensorRT engine failed, nothing written: "):
        export_checkpoint(tiny_checkpoint, config)
    assert list(tmp_path.iterdir()) == []


def test_a_version_written_meanwhile_by_another_export_is_never_replaced(
    tmp_path: pathlib.Path,
) -> None:
    staged = publish.stage(tmp_path, "tiny", 1, force=False)
    (staged.folder / "model.onnx").write_bytes(b"ours")
    (tmp_path / "tiny" / "1").mkdir()
    (tmp_path / "tiny" / "1" / "model.onnx").write_bytes(b"theirs")
    with pytest.raises(ExportError, match=r"cannot write .*tiny/1: another export wrote it"):
        publish.publish(staged)
    assert (tmp_path / "tiny" / "1" / "model.onnx").read_bytes() == b"theirs"
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert left == ["tiny", "tiny/1", "tiny/1/model.onnx"]


def test_a_model_folder_on_another_file_system_is_published(tmp_path: pathlib.Path) -> None:
    """The staging folder sat in the repository root, so a model folder mounted (or linked)
    from another file system failed at the final rename, after all the work."""
    shm = pathlib.Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a file system of its own")
    elsewhere = pathlib.Path(tempfile.mkdtemp(dir=shm, prefix="ganserve-test-"))
    try:
        (tmp_path / "tiny").symlink_to(elsewhere, target_is_directory=True)
        staged = publish.stage(tmp_path, "tiny", 1, force=False)
        (staged.folder / "model.onnx").write_bytes(b"ours")
        with publish.interrupts_held():
            publish.publish(staged)
        assert (elsewhere / "1" / "model.onnx").read_bytes() == b"ours"
        assert [p.name for p in elsewhere.iterdir()] == ["1"]
    finally:
        shutil.rmtree(elsewhere)


def test_exports_of_one_model_at_once_get_a_version_each(
    tiny_checkpoint: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """Both picked the next free number; the second failed after all its work."""
    config = ExportConfig(repository=tmp_path / "repo", name="tiny", max_batch=2)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: export_checkpoint(tiny_checkpoint, config), range(2)))
    assert sorted(r.version.version for r in results) == [1, 2]
    assert sorted(p.name for p in (tmp_path / "repo" / "tiny").iterdir()) == ["1", "2"]


def test_an_export_waits_for_the_one_running_on_its_model(
    tiny_checkpoint: pathlib.Path, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = ExportConfig(repository=tmp_path / "repo", name="tiny", max_batch=2)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with publish.model_lock(tmp_path / "repo", "tiny"):
            waiting = pool.submit(export_checkpoint, tiny_checkpoint, config)
            deadline = time.monotonic() + 60
            while "waiting for it to finish" not in caplog.text:
                assert time.monotonic() < deadline and not waiting.done(), "it did not wait"
                time.sleep(0.01)
            assert not waiting.done() and list((tmp_path / "repo" / "tiny").iterdir()) == []
        assert waiting.result(60).version.version == 1


def test_a_model_folder_made_meanwhile_by_another_export_is_used(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two first exports of a model: the one whose mkdir came second failed (File exists)."""
    mkdir = pathlib.Path.mkdir

    def beaten(self: pathlib.Path, *args, **kwargs) -> None:
        mkdir(self)  # the other export, between the is_dir() check and this mkdir
        raise FileExistsError(17, "File exists", str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", beaten)
    staged = publish.stage(tmp_path, "tiny", 1, force=False)
    assert staged.folder.parent == tmp_path / "tiny" and staged.created == ()


def test_a_model_folder_removed_meanwhile_by_another_export_is_made_again(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another first export of the model made the folder too, failed and removed it, between
    this one making it and locking it: the lock failed with 'No such file or directory'."""
    make = publish._make_folders
    removed: list[pathlib.Path] = []

    def then_removed(folder: pathlib.Path, target: pathlib.Path) -> list[pathlib.Path]:
        made = make(folder, target)
        if not removed:
            folder.rmdir()
            removed.append(folder)
        return made

    monkeypatch.setattr(publish, "_make_folders", then_removed)
    with publish.model_lock(tmp_path / "repo", "tiny") as created:
        assert (tmp_path / "repo" / "tiny").is_dir() and removed
        assert created == (tmp_path / "repo", tmp_path / "repo" / "tiny")
    # The repository folder, made by the first attempt, is removed with the model folder: it
    # was left behind, empty.
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_cannot_be_flushed_after_publishing_is_a_warning(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """It failed the export after the version was live (and, with --force, after the old one
    had been swapped out and was then removed), saying nothing was written."""
    (tmp_path / "tiny" / "1").mkdir(parents=True)
    (tmp_path / "tiny" / "1" / "model.onnx").write_bytes(b"old")
    staged = publish.stage(tmp_path, "tiny", 1, force=True)
    (staged.folder / "model.onnx").write_bytes(b"new")
    fsync = os.fsync

    def failing_on_the_model_folder(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") == str(tmp_path / "tiny"):
            raise OSError(errno.EIO, "Input/output error")
        fsync(fd)

    monkeypatch.setattr(publish.os, "fsync", failing_on_the_model_folder)
    publish.publish(staged)
    assert (tmp_path / "tiny" / "1" / "model.onnx").read_bytes() == b"new"
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == ["1"]
    assert "published" in caplog.text and "could not flush its folder" in caplog.text


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_force_swaps_the_version_in_one_step_and_removes_the_old_one(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    """The old version was renamed aside, then the new one into place: a reload in between
    found no version, and two --force runs at once left the old one behind."""
    if not exchange:  # a C library without renameat2: two renames, as before
        monkeypatch.setattr(publish.ctypes, "CDLL", lambda *args, **kwargs: object())
    (tmp_path / "tiny" / "1").mkdir(parents=True)
    (tmp_path / "tiny" / "1" / "model.onnx").write_bytes(b"old")
    staged = publish.stage(tmp_path, "tiny", 1, force=True)
    (staged.folder / "model.onnx").write_bytes(b"new")
    synced: list[str] = []
    fsync = os.fsync
    monkeypatch.setattr(
        publish.os,
        "fsync",
        lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or fsync(fd),
    )
    if exchange:  # only the one-step exchange can publish: a rename would fail the test

        def no_rename(src, dst, *args, **kwargs) -> None:
            raise AssertionError(f"renamed {src} to {dst} instead of exchanging them")

        monkeypatch.setattr(publish.os, "rename", no_rename)
    publish.publish(staged)
    assert (tmp_path / "tiny" / "1" / "model.onnx").read_bytes() == b"new"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "tiny",
        "tiny/1",
        "tiny/1/model.onnx",
    ]
    # The files and their folder reach the disk before the swap, the model folder after it.
    assert synced[:2] == [str(staged.folder / "model.onnx"), str(staged.folder)]
    assert synced[-1] == str(tmp_path / "tiny")


def test_force_carries_a_file_of_the_old_version_over_and_names_the_ones_it_drops(
    tmp_path: pathlib.Path,
) -> None:
    """The checkpoint exported from inside the version it replaces goes on to the new one under
    the same path (a subfolder too); what the old version had besides is returned."""
    old = tmp_path / "tiny" / "1"
    (old / "ckpt").mkdir(parents=True)
    (old / "ckpt" / "source.pt").write_bytes(b"checkpoint")
    (old / "model.onnx").write_bytes(b"old")
    (old / "model.fp16.onnx").write_bytes(b"old")
    staged = publish.stage(tmp_path, "tiny", 1, force=True)
    kept = publish.inside_version(staged, tmp_path / "tiny" / "." / "1" / "ckpt" / "source.pt")
    assert kept == pathlib.PurePath("ckpt/source.pt")
    assert publish.inside_version(staged, tmp_path / "elsewhere.pt") is None
    (staged.folder / "model.onnx").write_bytes(b"new")
    publish.carry(staged, kept)
    assert publish.publish(staged) == ("model.fp16.onnx",)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "tiny",
        "tiny/1",
        "tiny/1/ckpt",
        "tiny/1/ckpt/source.pt",
        "tiny/1/model.onnx",
    ]
    assert (old / "ckpt" / "source.pt").read_bytes() == b"checkpoint"
    assert (old / "model.onnx").read_bytes() == b"new"


def test_force_refuses_a_checkpoint_that_is_a_file_the_export_writes_before_the_work(
    tiny_checkpoint: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint saved as the version's model.onnx would be replaced by the export."""
    version = tmp_path / "tiny" / "1"
    version.mkdir(parents=True)
    source = version / "model.onnx"
    source.write_bytes(tiny_checkpoint.read_bytes())
    monkeypatch.setattr(pipeline.onnx_export, "export_onnx", _no_work)
    config = ExportConfig(repository=tmp_path, name="tiny", version=1, force=True)
    with pytest.raises(ExportError) as caught:
        export_checkpoint(source, config)
    assert str(caught.value) == (
        f"cannot replace {version}: the checkpoint {source} is its model.onnx, which the export "
        "writes anew; move the checkpoint out of the folder, or pass another --version"
    )
    assert source.read_bytes() == tiny_checkpoint.read_bytes()
    assert [p.name for p in tmp_path.rglob("*")] == ["tiny", "1", "model.onnx"]


def test_force_without_renameat2_puts_the_old_version_back_when_the_new_one_cannot_move(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two renames: the old version aside, the new one into place. When the second fails the
    old version goes back, and the export fails as one error with nothing of it left."""
    monkeypatch.setattr(publish.ctypes, "CDLL", lambda *args, **kwargs: object())
    (tmp_path / "tiny" / "1").mkdir(parents=True)
    (tmp_path / "tiny" / "1" / "model.onnx").write_bytes(b"old")
    staged = publish.stage(tmp_path, "tiny", 1, force=True)
    (staged.folder / "model.onnx").write_bytes(b"new")
    rename, renamed = os.rename, []

    def failing_for_the_new_version(src, dst, *args, **kwargs) -> None:
        renamed.append((pathlib.Path(src), pathlib.Path(dst)))
        if pathlib.Path(src) == staged.folder:
            raise OSError(errno.EIO, "Input/output error")
        rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(publish.os, "rename", failing_for_the_new_version)
    with pytest.raises(ExportError, match=r"^cannot write .*tiny/1: Input/output error$"):
        publish.publish(staged)
    aside = staged.folder.with_name(staged.folder.name + ".replaced")
    assert renamed == [(staged.final, aside), (staged.folder, staged.final), (aside, staged.final)]
    assert (tmp_path / "tiny" / "1" / "model.onnx").read_bytes() == b"old"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "tiny",
        "tiny/1",
        "tiny/1/model.onnx",
    ]


def test_a_runtime_failure_while_verifying_is_one_line(
    tiny_checkpoint: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX Runtime's exceptions are not RuntimeErrors: an allocation that failed at a large
    --max-batch came out as a traceback."""

    def out_of_memory(*args, **kwargs):
        raise ort_state.Fail("bfc_arena.cc:359 AllocateRawInternal Failed to allocate memory")

    monkeypatch.setattr(pipeline, "_ort_runner", out_of_memory)
    config = ExportConfig(repository=tmp_path / "repo", name="tiny", max_batch=2)
    with pytest.raises(
        ExportError,
        match=r"^the FP32 ONNX check failed, nothing written: .*Failed to allocate memory; "
        r"a smaller --max-batch or --verify-batch-sizes needs less",
    ):
        export_checkpoint(tiny_checkpoint, config)
    assert list(tmp_path.iterdir()) == []


def test_recorded_values_are_written_as_strict_json_or_named(
    tiny_checkpoint: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """A tensor in the metrics failed after the whole export (TypeError), a NaN metric was
    written as a bare NaN, which strict JSON readers refuse, and a class name gRPC cannot carry
    was a traceback."""
    ckpt = checkpoint.load(tiny_checkpoint)
    ckpt["metrics"] = {"fid": torch.tensor(12.5), "kid": float("nan"), "n": 3}
    checkpoint.save(ckpt, tmp_path / "odd.pt")
    result = export_checkpoint(
        tmp_path / "odd.pt", ExportConfig(repository=tmp_path / "repo", name="tiny", max_batch=2)
    )
    text = (result.version.path / "metadata.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metadata.json"))[
        "training_metrics"
    ] == {"fid": 12.5, "kid": None, "n": 3}
    for key, value, message in (
        ("dataset", {**ckpt["dataset"], "seen": {1, 2}}, "dataset.seen holds a set"),
        ("dataset", {**ckpt["dataset"], "class_names": ["\udcff"] * 10}, "not valid UTF-8"),
    ):
        checkpoint.save({**ckpt, key: value}, tmp_path / "bad.pt")
        config = ExportConfig(repository=tmp_path / "bad-repo", name="tiny", max_batch=2)
        with pytest.raises(ExportError, match=message):
            export_checkpoint(tmp_path / "bad.pt", config)
        assert not (tmp_path / "bad-repo").exists()


@pytest.mark.parametrize(
    ("types", "pinned"),
    [
        (["DECONVOLUTION", "SCALE", "ACTIVATION", "DECONVOLUTION", "ACTIVATION"], [3, 4]),
        (
            [
                "MATRIX_MULTIPLY",
                "ACTIVATION",
                "MATRIX_MULTIPLY",
                "CONSTANT",
                "ELEMENTWISE",
                "ACTIVATION",
                "SHUFFLE",
            ],
            [2, 4, 5],
        ),
        (
            [
                "CONVOLUTION",
                "ELEMENTWISE",
                "CONVOLUTION",
                "ELEMENTWISE",
                "RESIZE",
                "ELEMENTWISE",
                "ACTIVATION",
            ],
            [2, 3, 4, 5, 6],
        ),
        (["ELEMENTWISE", "ACTIVATION", "SHUFFLE"], [0, 1]),
    ],
    ids=["dcgan", "gan", "stylegan", "no-weights"],
)
def test_an_fp16_plan_pins_its_output_layers_from_the_last_weighted_one(
    types: list[str], pinned: list[int]
) -> None:
    """The last two computing layers were pinned: for a Gemm with a bias (parsed as a matrix
    product and an add) or a StyleGAN's skip additions, the output matrix product or
    convolution stayed in FP16."""
    assert tensorrt_build.output_tail(types) == pinned
