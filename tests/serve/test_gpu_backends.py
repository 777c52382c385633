"""GPU backends: ONNX Runtime CUDA and TensorRT providers, the native TensorRT plan, NVML metrics.

What runs everywhere: availability checks, backend resolution, provider options, plan
validation, and the metrics collector against a fake NVML. What needs a GPU (each backend
against the CPU engine) is skipped with the reason when the machine has none, as CI does.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import shutil
import sys
import types
from collections.abc import Iterator

import numpy as np
import prometheus_client as prom
import pytest

from ganserve.serve.backends import Backend, EngineOptions, cuda, resolve, tensorrt
from ganserve.serve.backends.cpu import OnnxCpuEngine
from ganserve.serve.errors import ModelLoadError
from ganserve.serve.gpu_metrics import register_gpu_metrics
from ganserve.serve.imaging import to_uint8
from ganserve.serve.inputs import feeds_for_seeds
from ganserve.serve.metadata import METADATA_FILE, MODEL_FILE, ModelMetadata

MODELS = pathlib.Path(__file__).resolve().parents[2] / "models"
VERSION_DIR = MODELS / "digits" / "1"
METADATA = ModelMetadata.read(VERSION_DIR / METADATA_FILE)
BATCH_SIZES = (1, 7, 64)

CUDA_REASON = cuda.unavailable(Backend.ONNXRUNTIME_CUDA)
TRT_EP_REASON = cuda.unavailable(Backend.ONNXRUNTIME_TENSORRT)
TRT_REASON = tensorrt.runtime_unavailable()
NO_GPU = "not available here (CI has no GPU)"
needs_cuda = pytest.mark.skipif(
    CUDA_REASON is not None,
    reason=f"needs a CUDA GPU and onnxruntime-gpu: {NO_GPU}: {CUDA_REASON}",
)
needs_trt_ep = pytest.mark.skipif(
    TRT_EP_REASON is not None,
    reason=f"needs a CUDA GPU and onnxruntime-gpu with TensorRT: {NO_GPU}: {TRT_EP_REASON}",
)
needs_trt = pytest.mark.skipif(
    TRT_REASON is not None,
    reason=f"needs a CUDA GPU, tensorrt and cuda-python: {NO_GPU}: {TRT_REASON}",
)
without_cuda = pytest.mark.skipif(CUDA_REASON is None, reason="a CUDA GPU is usable here")


def _inputs(n: int) -> dict[str, np.ndarray]:
    """The feeds of seeds 1000.. with classes cycling, as the server builds them."""
    return feeds_for_seeds(METADATA, range(1000, 1000 + n), np.arange(n) % METADATA.num_classes)


def _assert_matches(out: np.ndarray, reference: np.ndarray, max_abs: float) -> None:
    """Close in float, and within one uint8 level on at least 99.9% of pixels."""
    assert out.shape == reference.shape and out.dtype == np.float32
    assert float(np.abs(out - reference).max()) <= max_abs
    levels = np.abs(to_uint8(out).astype(np.int16) - to_uint8(reference).astype(np.int16))
    assert float((levels <= 1).mean()) >= 0.999


def _assert_batch_invariant(engine: object) -> None:
    """A seed renders the same alone as inside a batch of 64.

    Not bit-exact on a GPU: cuDNN and TensorRT may pick different kernels per batch size, and
    a rounding difference of 1e-6 flips a uint8 level now and then. So: never more than one
    level apart, and identical on at least 99.9% of pixels.
    """
    feeds = _inputs(64)
    batch = to_uint8(engine.run(feeds)).astype(np.int16)
    for i in (0, 31, 63):
        one = {name: value[i : i + 1] for name, value in feeds.items()}
        alone = to_uint8(engine.run(one)).astype(np.int16)
        diff = np.abs(alone[0] - batch[i])
        assert int(diff.max()) <= 1
        assert float((diff == 0).mean()) >= 0.999


def _assert_exact_at_one_shape(engine: object) -> None:
    """At one batch shape a seed's image does not depend on its batch-mates or its row, to
    the byte: what docs/backends.md promises on a GPU with one preferred batch size, where
    every batch is padded to that shape."""
    feeds = _inputs(64)
    order = np.random.default_rng(0).permutation(64)
    shuffled = {name: value[order] for name, value in feeds.items()}
    np.testing.assert_array_equal(
        to_uint8(engine.run(shuffled)), to_uint8(engine.run(feeds))[order]
    )


@pytest.fixture(scope="module")
def cpu_engine() -> Iterator[OnnxCpuEngine]:
    engine = OnnxCpuEngine(VERSION_DIR, METADATA, EngineOptions())
    yield engine
    engine.close()


# --- availability and resolution (run everywhere) -------------------------------------------


@without_cuda
@pytest.mark.parametrize("backend", [Backend.ONNXRUNTIME_CUDA, Backend.ONNXRUNTIME_TENSORRT])
def test_ort_gpu_backends_say_why_they_cannot_run_without_a_gpu(backend: Backend) -> None:
    reason = cuda.unavailable(backend)
    assert isinstance(reason, str) and reason.strip()
    assert "\n" not in reason


def test_cuda_unavailable_refuses_a_backend_that_is_not_onnxruntime_gpu() -> None:
    assert "not an ONNX Runtime GPU backend" in cuda.unavailable(Backend.ONNXRUNTIME_CPU)


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="the tensorrt package is installed"
)
@pytest.mark.parametrize("driver", [True, False])
def test_without_tensorrt_the_reason_names_the_real_lack(
    monkeypatch: pytest.MonkeyPatch, driver: bool
) -> None:
    """On a machine with an NVIDIA driver, installing tensorrt is the fix; without one it
    would not help, so the reason says there is no GPU instead."""
    monkeypatch.setattr(tensorrt, "nvidia_device_visible", lambda: driver)
    reason = tensorrt.runtime_unavailable()
    if driver:
        assert reason.startswith(
            "the tensorrt package cannot be imported (pip install tensorrt-cu12)"
        )
    else:
        assert reason == "no NVIDIA GPU is visible here (and the tensorrt package is not installed)"


def test_tensorrt_unavailable_names_the_missing_plan() -> None:
    assert "model.plan" in tensorrt.unavailable(VERSION_DIR)


def _version_with_plan(tmp_path: pathlib.Path, extra: dict) -> pathlib.Path:
    version_dir = tmp_path / "digits" / "1"
    version_dir.mkdir(parents=True)
    shutil.copy(VERSION_DIR / MODEL_FILE, version_dir / MODEL_FILE)
    dataclasses.replace(METADATA, extra=extra).write(version_dir / METADATA_FILE)
    (version_dir / tensorrt.PLAN_FILE).write_bytes(b"not a plan")
    return version_dir


def test_tensorrt_unavailable_wants_the_build_record_of_the_plan(tmp_path: pathlib.Path) -> None:
    version_dir = _version_with_plan(tmp_path, extra={})
    assert "extra.tensorrt" in tensorrt.unavailable(version_dir)


def test_tensorrt_unavailable_reports_unreadable_metadata_instead_of_raising(
    tmp_path: pathlib.Path,
) -> None:
    version_dir = _version_with_plan(tmp_path, extra={})
    (version_dir / METADATA_FILE).write_text("{not json")
    assert "not readable JSON" in tensorrt.unavailable(version_dir)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"tensorrt": {"version": "10.1.0"}}, "no extra.tensorrt record"),
        ({"tensorrt": {"version": "10.0.1", "gpu": "NVIDIA H100 80GB HBM3"}}, "TensorRT 10.0.1"),
        ({"tensorrt": {"version": "10.1.0", "gpu": "NVIDIA A10G"}}, "model 'NVIDIA A10G'"),
    ],
    ids=["no-gpu-recorded", "other-version", "other-gpu"],
)
def test_plan_mismatch_names_what_differs(extra: dict, match: str) -> None:
    reason = tensorrt.plan_mismatch(extra, "10.1.0", ["NVIDIA H100 80GB HBM3"])
    assert match in reason


def test_plan_mismatch_accepts_the_recorded_version_and_gpu() -> None:
    extra = {"tensorrt": {"version": "10.1.0", "gpu": "NVIDIA H100 80GB HBM3"}}
    gpus = ["NVIDIA L4", "nvidia h100 80gb hbm3"]
    assert tensorrt.plan_mismatch(extra, "10.1.0", gpus) is None


@without_cuda
def test_auto_backend_resolves_to_onnxruntime_cpu_without_a_gpu() -> None:
    assert resolve(Backend.AUTO, VERSION_DIR) is Backend.ONNXRUNTIME_CPU


@without_cuda
@pytest.mark.parametrize("backend", [Backend.ONNXRUNTIME_CUDA, Backend.ONNXRUNTIME_TENSORRT])
def test_explicit_ort_gpu_backend_is_refused_without_a_gpu(backend: Backend) -> None:
    with pytest.raises(ModelLoadError, match=f"backend {backend.value} cannot run here"):
        resolve(backend, VERSION_DIR)


def test_explicit_tensorrt_backend_is_refused_without_a_plan() -> None:
    with pytest.raises(ModelLoadError, match=r"cannot run here: no model\.plan"):
        resolve(Backend.TENSORRT, VERSION_DIR)


@without_cuda
@pytest.mark.filterwarnings("ignore:Specified provider")
def test_cuda_engine_refuses_a_session_that_fell_back_to_the_cpu() -> None:
    with pytest.raises(ModelLoadError, match="fell back to CPUExecutionProvider"):
        cuda.OnnxCudaEngine(VERSION_DIR, METADATA, EngineOptions(), Backend.ONNXRUNTIME_CUDA)


def test_tensorrt_engine_needs_a_plan() -> None:
    with pytest.raises(ModelLoadError, match=r"needs a model\.plan"):
        tensorrt.TensorRTEngine(VERSION_DIR, METADATA, EngineOptions())


# --- provider options (run everywhere) -------------------------------------------------------


def test_cuda_provider_options_pick_heuristic_conv_search_on_the_chosen_gpu() -> None:
    options = cuda.cuda_provider_options(EngineOptions(device_id=3))
    assert options["device_id"] == 3
    assert options["cudnn_conv_algo_search"] == "HEURISTIC"
    assert options["do_copy_in_default_stream"] is True


@pytest.mark.parametrize(
    ("num_classes", "expected_min", "expected_max"),
    [(10, "z:1x64,label:1", "z:64x64,label:64"), (0, "z:1x64", "z:64x64")],
    ids=["conditional", "unconditional"],
)
def test_tensorrt_profile_covers_batch_one_to_max_for_every_input(
    num_classes: int, expected_min: str, expected_max: str
) -> None:
    metadata = dataclasses.replace(METADATA, num_classes=num_classes, class_names=())
    options = cuda.tensorrt_provider_options(metadata, EngineOptions(max_batch_size=64))
    assert options["trt_profile_min_shapes"] == expected_min
    assert options["trt_profile_max_shapes"] == expected_max
    assert options["trt_profile_opt_shapes"] == expected_max  # no preferred sizes: tune for max


def test_tensorrt_profile_covers_a_stylegans_every_input() -> None:
    """Only z and label were in the profile: ONNX Runtime then learns a stylegan's other
    inputs' shapes at run time and rebuilds the engine as the batch grows."""
    style = dataclasses.replace(METADATA, truncation_mode="w", noise_dim=2704, style_layers=8)
    options = cuda.tensorrt_provider_options(style, EngineOptions(max_batch_size=16))
    assert options["trt_profile_max_shapes"] == (
        "z:16x64,label:16,truncation:16,noise:16x2704,z_mix:16x64,mix_layer:16"
    )
    assert options["trt_profile_min_shapes"].startswith("z:1x64,label:1,truncation:1,noise:1x")


def test_pips_tensorrt_libraries_are_loaded_from_their_package_folder(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tensorrt-cu12 keeps libnvinfer.so.10 in site-packages/tensorrt_libs, on no library path:
    ONNX Runtime's TensorRT provider could not open it in the GPU image."""
    package = tmp_path / "tensorrt_libs"
    package.mkdir()
    (package / "__init__.py").write_text("")
    libz = next(
        p
        for p in ("/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/libz.so.1")
        if pathlib.Path(p).exists()
    )
    shutil.copy(libz, package / "libnvinfer.so.10")
    shutil.copy(libz, package / "libnvinfer_lean.so.10")  # libnvinfer's symbols again: not
    (package / "libnvonnxparser.so.10").write_bytes(b"not a library")  # left to the provider
    monkeypatch.syspath_prepend(str(tmp_path))
    cuda._load_tensorrt_libraries.cache_clear()
    try:
        cuda._load_tensorrt_libraries()
    finally:
        cuda._load_tensorrt_libraries.cache_clear()
    maps = pathlib.Path("/proc/self/maps").read_text()
    assert str(package / "libnvinfer.so.10") in maps
    assert str(package / "libnvinfer_lean.so.10") not in maps


def test_tensorrt_profile_is_tuned_for_the_largest_preferred_batch() -> None:
    engine_options = EngineOptions(max_batch_size=64, preferred_batch_sizes=(8, 32, 16))
    options = cuda.tensorrt_provider_options(METADATA, engine_options)
    assert options["trt_profile_opt_shapes"] == "z:32x64,label:32"


def test_tensorrt_engine_cache_is_used_only_with_a_cache_dir(tmp_path: pathlib.Path) -> None:
    assert "trt_engine_cache_enable" not in cuda.tensorrt_provider_options(
        METADATA, EngineOptions()
    )
    options = cuda.tensorrt_provider_options(METADATA, EngineOptions(cache_dir=tmp_path))
    assert options["trt_engine_cache_enable"] is True
    assert options["trt_engine_cache_path"] == str(tmp_path)
    assert options["trt_timing_cache_enable"] is True


# --- plan validation (run everywhere) --------------------------------------------------------


def _plan_tensors(**changes: object) -> list[tensorrt.PlanTensor]:
    """The tensors of a plan built from the bundled digits model, with some fields changed."""
    tensors = {
        "z": tensorrt.PlanTensor("z", True, (-1, 64), np.dtype(np.float32), (1, 64)),
        "label": tensorrt.PlanTensor("label", True, (-1,), np.dtype(np.int64), (1, 64)),
        "image": tensorrt.PlanTensor("image", False, (-1, 1, 32, 32), np.dtype(np.float32)),
    }
    for key, value in changes.items():
        name, field = key.split("__")
        if value is None and field == "drop":
            del tensors[name]
        else:
            tensors[name] = dataclasses.replace(tensors[name], **{field: value})
    return list(tensors.values())


def test_plan_signature_accepts_a_matching_plan_and_names_its_output() -> None:
    assert tensorrt.check_plan_signature(_plan_tensors(), METADATA, 64, "p") == "image"


def test_plan_signature_accepts_int32_labels() -> None:
    tensors = _plan_tensors(label__dtype=np.dtype(np.int32))
    assert tensorrt.check_plan_signature(tensors, METADATA, 64, "p") == "image"


@pytest.mark.parametrize(
    ("changes", "max_batch", "match"),
    [
        ({"label__drop": None}, 64, r"inputs are \['z'\], metadata implies \['label', 'z'\]"),
        ({"z__shape": (-1, 128)}, 64, r"input z has shape \(-1, 128\), metadata implies \(N, 64\)"),
        ({"z__dtype": np.dtype(np.int32)}, 64, "input z is int32"),
        ({"label__dtype": np.dtype(np.float32)}, 64, "input label is float32"),
        ({"image__shape": (-1, 3, 32, 32)}, 64, r"output shape .* \(N, 1, 32, 32\)"),
        ({"z__batch_range": (1, 32)}, 64, r"accepts batch sizes 1\.\.32 .* 1\.\.64"),
        ({"label__batch_range": (2, 64)}, 64, r"input label accepts batch sizes 2\.\.64"),
        ({"z__shape": (8, 64), "z__batch_range": (8, 8)}, 8, r"accepts batch sizes 8\.\.8"),
    ],
    ids=[
        "missing-label",
        "latent-dim",
        "z-dtype",
        "label-dtype",
        "output-shape",
        "max-batch",
        "min-batch",
        "fixed-batch",
    ],
)
def test_plan_signature_names_the_mismatch(changes: dict, max_batch: int, match: str) -> None:
    with pytest.raises(ModelLoadError, match=match):
        tensorrt.check_plan_signature(_plan_tensors(**changes), METADATA, max_batch, "p")


STYLE = dataclasses.replace(METADATA, truncation_mode="w", noise_dim=2704, style_layers=8)


def _style_plan(**changes: tensorrt.PlanTensor) -> list[tensorrt.PlanTensor]:
    """A StyleGAN-style plan (every input the contract has), with some tensors replaced."""
    f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
    tensors = {
        "z": tensorrt.PlanTensor("z", True, (-1, 64), f32, (1, 64)),
        "label": tensorrt.PlanTensor("label", True, (-1,), i64, (1, 64)),
        "truncation": tensorrt.PlanTensor("truncation", True, (-1,), f32, (1, 64)),
        "noise": tensorrt.PlanTensor("noise", True, (-1, 2704), f32, (1, 64)),
        "z_mix": tensorrt.PlanTensor("z_mix", True, (-1, 64), f32, (1, 64)),
        "mix_layer": tensorrt.PlanTensor("mix_layer", True, (-1,), i64, (1, 64)),
        "image": tensorrt.PlanTensor("image", False, (-1, 1, 32, 32), f32),
    }
    return list({**tensors, **changes}.values())


def test_plan_signature_accepts_every_input_of_a_stylegan() -> None:
    assert tensorrt.check_plan_signature(_style_plan(), STYLE, 64, "p") == "image"


@pytest.mark.parametrize(
    ("tensor", "match"),
    [
        (("noise", (-1, 100), np.float32), r"input noise has shape \(-1, 100\), .* \(N, 2704\)"),
        (("noise", (-1, -1), np.float32), r"input noise has shape \(-1, -1\)"),
        (("z_mix", (-1, 64), np.int32), "input z_mix is int32, expected float32 or float16"),
        (("mix_layer", (-1, 8), np.int64), r"input mix_layer has shape \(-1, 8\), .* \(N\)"),
        (("mix_layer", (-1,), np.float32), "input mix_layer is float32, expected int64 or int32"),
        (("truncation", (), np.float32), r"input truncation has shape \(\)"),
    ],
    ids=["noise-size", "noise-dynamic", "z_mix-dtype", "mix_layer-shape", "mix_layer-dtype", "0-d"],
)
def test_plan_signature_checks_every_input(tensor: tuple, match: str) -> None:
    name, shape, dtype = tensor
    changed = tensorrt.PlanTensor(name, True, shape, np.dtype(dtype), (1, 64) if shape else None)
    with pytest.raises(ModelLoadError, match=match):
        tensorrt.check_plan_signature(_style_plan(**{name: changed}), STYLE, 64, "p")


# --- GPU metrics ----------------------------------------------------------------------------


def _nvml_sees_a_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount() > 0
    except Exception:
        return False


@pytest.mark.skipif(_nvml_sees_a_gpu(), reason="NVML sees a GPU here")
def test_register_gpu_metrics_registers_nothing_without_an_nvml_gpu() -> None:
    registry = prom.CollectorRegistry()
    assert register_gpu_metrics(registry) is False
    assert b"ganserve_gpu" not in prom.generate_latest(registry)


class _NVMLError(Exception):
    pass


def _fake_nvml(gpus: list[dict | None], init_error: bool = False) -> types.ModuleType:
    """A stand-in for pynvml (no GPU here): one dict per GPU, None for a GPU whose queries fail."""
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = _NVMLError

    def init() -> None:
        if init_error:
            raise _NVMLError("NVML Shared Library Not Found")

    def handle(index: int) -> int:
        if gpus[index] is None:
            raise _NVMLError("GPU is lost")
        return index

    nvml.nvmlInit = init
    nvml.nvmlShutdown = lambda: None
    nvml.nvmlDeviceGetCount = lambda: len(gpus)
    nvml.nvmlDeviceGetHandleByIndex = handle
    nvml.nvmlDeviceGetName = lambda h: gpus[h]["name"]
    nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=gpus[h]["util"])
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(
        used=gpus[h]["used"], total=gpus[h]["total"], free=gpus[h]["total"] - gpus[h]["used"]
    )
    return nvml


def test_gpu_metrics_export_utilization_and_memory_per_gpu_with_fake_nvml(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gpus = [
        {"name": "NVIDIA H100 80GB HBM3", "util": 75, "used": 2**30, "total": 80 * 2**30},
        {"name": b"NVIDIA L4", "util": 0, "used": 0, "total": 24 * 2**30},
    ]
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(gpus))
    registry = prom.CollectorRegistry()
    assert register_gpu_metrics(registry) is True
    h100 = {"gpu": "0", "name": "NVIDIA H100 80GB HBM3"}
    l4 = {"gpu": "1", "name": "NVIDIA L4"}
    assert registry.get_sample_value("ganserve_gpu_utilization_ratio", h100) == 0.75
    assert registry.get_sample_value("ganserve_gpu_memory_used_bytes", h100) == 2**30
    assert registry.get_sample_value("ganserve_gpu_memory_total_bytes", h100) == 80 * 2**30
    assert registry.get_sample_value("ganserve_gpu_memory_total_bytes", l4) == 24 * 2**30


def test_gpu_metrics_scrape_survives_a_failing_gpu_with_fake_nvml(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gpus = [None, {"name": "NVIDIA L4", "util": 50, "used": 1, "total": 2}]
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(gpus))
    registry = prom.CollectorRegistry()
    assert register_gpu_metrics(registry) is True
    text = prom.generate_latest(registry).decode()
    assert 'ganserve_gpu_utilization_ratio{gpu="1",name="NVIDIA L4"} 0.5' in text
    assert 'gpu="0"' not in text


def test_register_gpu_metrics_returns_false_when_nvml_fails_with_fake_nvml(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml([], init_error=True))
    assert register_gpu_metrics(prom.CollectorRegistry()) is False


# --- ONNX Runtime on the GPU (needs a GPU) ---------------------------------------------------

# TF32 cannot be switched off in the TensorRT provider's options, so its convolutions may run
# with a 10-bit mantissa on Ampere and later.
ORT_GPU_TOLERANCE = {Backend.ONNXRUNTIME_CUDA: 1e-3, Backend.ONNXRUNTIME_TENSORRT: 1e-2}


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(Backend.ONNXRUNTIME_CUDA, marks=needs_cuda, id="cuda"),
        pytest.param(Backend.ONNXRUNTIME_TENSORRT, marks=needs_trt_ep, id="tensorrt-ep"),
    ],
)
def ort_gpu_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[cuda.OnnxCudaEngine]:
    options = EngineOptions(max_batch_size=64, cache_dir=tmp_path_factory.mktemp("trt-cache"))
    engine = cuda.OnnxCudaEngine(VERSION_DIR, METADATA, options, request.param)
    yield engine
    engine.close()


@pytest.mark.parametrize("n", BATCH_SIZES)
def test_ort_gpu_engine_matches_the_cpu_engine(
    ort_gpu_engine: cuda.OnnxCudaEngine, cpu_engine: OnnxCpuEngine, n: int
) -> None:
    feeds = _inputs(n)
    _assert_matches(
        ort_gpu_engine.run(feeds),
        cpu_engine.run(feeds),
        ORT_GPU_TOLERANCE[ort_gpu_engine.backend],
    )


def test_ort_gpu_engine_is_batch_invariant(ort_gpu_engine: cuda.OnnxCudaEngine) -> None:
    _assert_batch_invariant(ort_gpu_engine)
    _assert_exact_at_one_shape(ort_gpu_engine)


# --- native TensorRT (needs a GPU, tensorrt and cuda-python) ---------------------------------


def _build_plan(version_dir: pathlib.Path, max_batch: int) -> ModelMetadata:
    """Build model.plan from the bundled model.onnx with a 1..max_batch profile, TF32 off, and
    record what built it, as export-gan will."""
    import tensorrt as trt

    logger = tensorrt.trt_logger(trt)  # TensorRT keeps the process's first logger
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse((VERSION_DIR / MODEL_FILE).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {MODEL_FILE}: {errors}")
    config = builder.create_builder_config()
    config.clear_flag(trt.BuilderFlag.TF32)  # compared with the FP32 CPU engine
    profile = builder.create_optimization_profile()
    latent = METADATA.latent_dim
    profile.set_shape("z", (1, latent), (max_batch, latent), (max_batch, latent))
    profile.set_shape("label", (1,), (max_batch,), (max_batch,))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT failed to build the plan; see its log")
    version_dir.mkdir(parents=True)
    (version_dir / tensorrt.PLAN_FILE).write_bytes(bytes(plan))
    shutil.copy(VERSION_DIR / MODEL_FILE, version_dir / MODEL_FILE)
    gpu = tensorrt.gpu_names(tensorrt.import_cudart())[0]
    record = {"tensorrt": {"version": trt.__version__, "gpu": gpu}}
    metadata = dataclasses.replace(METADATA, extra={**METADATA.extra, **record})
    metadata.write(version_dir / METADATA_FILE)
    return metadata


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    if TRT_REASON is not None:
        pytest.skip(f"needs a CUDA GPU, tensorrt and cuda-python: {NO_GPU}: {TRT_REASON}")
    version_dir = tmp_path_factory.mktemp("plan") / "digits" / "1"
    _build_plan(version_dir, max_batch=64)
    return version_dir


@pytest.fixture(scope="module")
def trt_engine(plan_dir: pathlib.Path) -> Iterator[tensorrt.TensorRTEngine]:
    metadata = ModelMetadata.read(plan_dir / METADATA_FILE)
    engine = tensorrt.TensorRTEngine(plan_dir, metadata, EngineOptions(max_batch_size=64))
    yield engine
    engine.close()


@needs_trt
def test_built_plan_is_usable_and_auto_picks_it(plan_dir: pathlib.Path) -> None:
    assert tensorrt.unavailable(plan_dir) is None
    assert resolve(Backend.AUTO, plan_dir) is Backend.TENSORRT


@needs_trt
@pytest.mark.parametrize("n", BATCH_SIZES)
def test_tensorrt_engine_matches_the_cpu_engine(
    trt_engine: tensorrt.TensorRTEngine, cpu_engine: OnnxCpuEngine, n: int
) -> None:
    feeds = _inputs(n)
    _assert_matches(trt_engine.run(feeds), cpu_engine.run(feeds), 1e-3)


@needs_trt
def test_tensorrt_engine_is_batch_invariant(trt_engine: tensorrt.TensorRTEngine) -> None:
    _assert_batch_invariant(trt_engine)
    _assert_exact_at_one_shape(trt_engine)


@needs_trt
def test_tensorrt_engine_refuses_a_max_batch_beyond_the_plan_profile(
    plan_dir: pathlib.Path,
) -> None:
    metadata = ModelMetadata.read(plan_dir / METADATA_FILE)
    with pytest.raises(ModelLoadError, match=r"accepts batch sizes 1\.\.64 .* 1\.\.128"):
        tensorrt.TensorRTEngine(plan_dir, metadata, EngineOptions(max_batch_size=128))


@needs_trt
def test_tensorrt_engine_refuses_a_plan_recorded_for_another_gpu(plan_dir: pathlib.Path) -> None:
    metadata = ModelMetadata.read(plan_dir / METADATA_FILE)
    record = {"tensorrt": {**metadata.extra["tensorrt"], "gpu": "No Such GPU"}}
    metadata = dataclasses.replace(metadata, extra={**metadata.extra, **record})
    with pytest.raises(ModelLoadError, match="built for GPU model 'No Such GPU'"):
        tensorrt.TensorRTEngine(plan_dir, metadata, EngineOptions(max_batch_size=64))


@needs_trt
def test_tensorrt_engine_close_is_idempotent(plan_dir: pathlib.Path) -> None:
    metadata = ModelMetadata.read(plan_dir / METADATA_FILE)
    engine = tensorrt.TensorRTEngine(plan_dir, metadata, EngineOptions(max_batch_size=64))
    engine.close()
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.run(_inputs(1))
