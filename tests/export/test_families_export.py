"""export-gan for every generator family: the ONNX signature follows `ganserve.serve.inputs`,
the metadata says how to feed it, and the stylegan's inputs mean what the contract says."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ganserve.export.pipeline import ExportConfig, ExportError, TensorRTMode, export_checkpoint
from ganserve.export.verify import FP32, VerificationError, verify
from ganserve.serve import inputs
from ganserve.serve.metadata import ModelMetadata
from ganserve.train import checkpoint, sampling
from ganserve.train.data import load_digits_split
from ganserve.train.loop import TrainConfig, train
from ganserve.train.networks import GeneratorConfig

FAMILIES = {
    "dcgan": GeneratorConfig(width=8, latent_dim=16, embed_dim=8),
    "gan": GeneratorConfig(architecture="gan", width=16, fc_layers=2, latent_dim=16, embed_dim=8),
    "stylegan": GeneratorConfig(
        architecture="stylegan", width=4, latent_dim=16, embed_dim=8, w_dim=16, mapping_layers=2
    ),
}
SIGNATURES = {  # (truncation_mode, noise_dim, style_layers)
    "dcgan": ("z-scale", 0, 0),
    "gan": ("z-scale", 0, 0),
    "stylegan": ("w", 2704, 7),
}
ONNX_TYPES = {"z": "float", "label": "int64", "truncation": "float", "noise": "float"}
ONNX_TYPES |= {"z_mix": "float", "mix_layer": "int64"}
FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[pathlib.Path, object]]:
    """Each family trained 4 steps on digits and exported (FP32 + FP16, batch sizes 1 and 5)."""
    data, heldout = load_digits_split(32)
    root = tmp_path_factory.mktemp("families")
    out = {}
    for arch, config in FAMILIES.items():
        ckpt = root / f"{arch}.pt"
        style = arch == "stylegan"
        # A high learning rate moves the noise strengths and class means of w far enough
        # from their initial zeros in 4 steps for the input checks below to see them.
        options = {"style_mixing": 0.5, "lr_g": 0.01} if style else {}
        train(
            config,
            TrainConfig(steps=4, batch_size=8, eval_per_class=0, **options),
            data,
            heldout,
            ckpt,
        )
        export = ExportConfig(
            repository=root / "repo",
            name=f"digits-{arch}",
            max_batch=5,
            verify_batch_sizes=(1, 5),
            fp16_onnx=True,
            tensorrt=TensorRTMode.OFF,
        )
        out[arch] = (ckpt, export_checkpoint(ckpt, export).version)
    return out


def io_types(model: onnx.ModelProto) -> list[tuple[str, int]]:
    return [
        (v.name, v.type.tensor_type.elem_type) for v in [*model.graph.input, *model.graph.output]
    ]


def session(version) -> ort.InferenceSession:
    return ort.InferenceSession(str(version.onnx_path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_metadata_names_family_truncation_mode_noise_and_style_layers(exported, arch) -> None:
    _, version = exported[arch]
    m = ModelMetadata.read(version.path / "metadata.json")
    assert m.architecture == arch
    assert (m.truncation_mode, m.noise_dim, m.style_layers) == SIGNATURES[arch]
    assert m.extra["onnx"]["verification"]["max_abs_diff"] <= 1e-4
    assert m.extra["onnx_fp16"]["verification"]["max_level_diff"] <= 4


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_onnx_inputs_are_exactly_the_contracts_with_a_dynamic_batch(exported, arch) -> None:
    _, version = exported[arch]
    model = onnx.load(str(version.onnx_path))
    names = [i.name for i in model.graph.input]
    assert names == inputs.input_names(version.metadata)
    for i in model.graph.input:
        t = i.type.tensor_type
        assert onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name.startswith(
            ONNX_TYPES[i.name]
        ), i.name
        assert t.shape.dim[0].dim_param, f"{i.name} has a fixed batch axis"
    assert [o.name for o in model.graph.output] == ["image"]


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_onnx_matches_pytorch_on_the_servers_feeds_at_any_batch(exported, arch) -> None:
    ckpt, version = exported[arch]
    generator = checkpoint.build_generator(checkpoint.load(ckpt))
    m, sess = version.metadata, session(version)
    seeds, labels = list(range(40, 51)), [s % 10 for s in range(40, 51)]
    feeds = inputs.feeds_for_seeds(m, seeds, labels, truncation=0.8)
    got = sess.run(None, feeds)[0]
    want = sampling.run_feeds(generator, feeds).numpy()
    assert np.abs(got - want).max() <= 1e-4
    for i in (0, 7):  # alone, the same pixels as inside the batch
        alone = sess.run(None, {k: v[i : i + 1] for k, v in feeds.items()})[0]
        assert np.array_equal(alone[0], got[i])


def stylegan(exported):
    _, version = exported["stylegan"]
    return version.metadata, session(version)


def test_stylegan_psi_zero_gives_the_classes_w_avg_image_for_every_seed(exported) -> None:
    m, sess = stylegan(exported)
    feeds = inputs.feeds_for_seeds(m, [1, 2, 3, 4], [6, 6, 6, 6], truncation=0.0)
    feeds["noise"][:] = feeds["noise"][0]  # the same noise maps: only w could differ
    images = sess.run(None, feeds)[0]
    for i in range(1, 4):
        assert np.abs(images[i] - images[0]).max() <= 1e-6
    other_class = dict(feeds, label=np.full(4, 2, np.int64))
    assert np.abs(sess.run(None, other_class)[0][0] - images[0]).max() > 1e-3
    # psi = 1 leaves w alone: the seeds differ again.
    free = dict(feeds, truncation=np.ones(4, np.float32))
    assert np.abs(sess.run(None, free)[0][1] - images[0]).max() > 1e-3


def test_stylegan_w_avg_image_is_the_generator_fed_w_avg(exported) -> None:
    ckpt, _ = exported["stylegan"]
    generator = checkpoint.build_generator(checkpoint.load(ckpt))
    m, sess = stylegan(exported)
    feeds = inputs.feeds_for_seeds(m, [9], [3], truncation=0.0)
    with torch.no_grad():
        ws = generator.w_avg[3][None, None].expand(1, m.style_layers, -1)  # (1, L, w_dim)
        want = generator.synthesis(ws, torch.from_numpy(feeds["noise"])).numpy()
    assert np.abs(sess.run(None, feeds)[0] - want).max() <= 1e-4


def test_stylegan_mix_layer_equal_to_style_layers_mixes_nothing(exported) -> None:
    m, sess = stylegan(exported)
    plain = inputs.feeds_for_seeds(m, [1, 2, 3], [0, 1, 2])
    unused = inputs.feeds_for_seeds(
        m, [1, 2, 3], [0, 1, 2], mix_seeds=[7, 8, 9], mix_layer=m.style_layers
    )
    assert not np.array_equal(plain["z_mix"], unused["z_mix"])
    assert np.array_equal(sess.run(None, plain)[0], sess.run(None, unused)[0])
    mixed = inputs.feeds_for_seeds(m, [1, 2, 3], [0, 1, 2], mix_seeds=[7, 8, 9], mix_layer=0)
    all_mix = inputs.feeds_for_seeds(m, [1, 2, 3], [0, 1, 2])
    all_mix["z"] = all_mix["z_mix"] = mixed["z_mix"]
    # mix_layer 0: every layer takes z_mix's style, so z itself no longer matters.
    assert np.abs(sess.run(None, mixed)[0] - sess.run(None, all_mix)[0]).max() <= 1e-6


def test_stylegan_noise_comes_from_the_seed(exported) -> None:
    m, sess = stylegan(exported)
    feeds = inputs.feeds_for_seeds(m, [5, 5], [4, 4])
    first, second = sess.run(None, feeds)[0]
    assert np.array_equal(first, second)  # the same seed, the same image
    quiet = dict(feeds, noise=np.zeros_like(feeds["noise"]))
    assert np.abs(sess.run(None, quiet)[0][0] - first).max() > 1e-4  # the noise is used
    assert np.array_equal(feeds["noise"][0], inputs.seed_vector(m, 5)[m.latent_dim :])


@pytest.mark.parametrize("ignored", ["truncation", "noise", "mix_layer"])
def test_verification_catches_an_artifact_that_ignores_a_stylegan_input(
    exported, ignored: str
) -> None:
    m, sess = stylegan(exported)
    neutral = {"truncation": 1.0, "noise": 0.0, "mix_layer": m.style_layers}

    def faulty(feeds: dict[str, np.ndarray]) -> np.ndarray:
        feeds = dict(feeds, **{ignored: np.full_like(feeds[ignored], neutral[ignored])})
        return sess.run(None, feeds)[0]

    def honest(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return sess.run(None, feeds)[0]

    with pytest.raises(VerificationError, match="out of tolerance"):
        verify(faulty, honest, metadata=m, batch_sizes=(1, 3), tolerance=FP32, what="faulty")


def test_bad_family_in_a_checkpoint_is_one_clear_error(exported, tmp_path: pathlib.Path) -> None:
    ckpt, _ = exported["gan"]
    bad = checkpoint.load(ckpt)
    bad["generator_config"] = {**bad["generator_config"], "architecture": "biggan"}
    checkpoint.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ExportError, match="architecture must be one of dcgan, gan, stylegan"):
        export_checkpoint(tmp_path / "bad.pt", ExportConfig(repository=tmp_path, name="bad"))


def test_stylegan_exports_fp16_without_the_optimiser(exported, tmp_path: pathlib.Path) -> None:
    # Unoptimised, the upsampling's scales stay Constant nodes with a float-list attribute,
    # which the FP16 converter once left FP32 under an FP16 type: the checker refused it.
    ckpt, _ = exported["stylegan"]
    config = ExportConfig(
        repository=tmp_path,
        name="style",
        optimize=False,
        max_batch=2,
        verify_batch_sizes=(1, 2),
        fp16_onnx=True,
        tensorrt=TensorRTMode.OFF,
    )
    version = export_checkpoint(ckpt, config).version
    assert version.metadata.extra["onnx_fp16"]["verification"]["max_level_diff"] <= 4
    fp16 = onnx.load(str(version.path / "model.fp16.onnx"))
    constants = [n for n in fp16.graph.node if n.op_type == "Constant"]
    float_attrs = [a.name for n in constants for a in n.attribute if a.name.startswith("value_f")]
    assert float_attrs == []  # rewritten as tensors, which the converter does turn FP16
    values = [a.t.data_type for n in constants for a in n.attribute if a.name == "value"]
    weights = [t.data_type for t in fp16.graph.initializer] + values
    assert FLOAT16 in weights and FLOAT not in weights
    # Fed and read like the FP32 model (keep_io_types): casts are inside the graph.
    assert io_types(fp16) == io_types(onnx.load(str(version.onnx_path)))
