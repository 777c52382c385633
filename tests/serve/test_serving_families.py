"""Every generator family is served by the same, unchanged server: a model is a model.

Tiny real checkpoints of the fully connected GAN and the StyleGAN-style generator (a few
training steps on digits) are exported with export-gan and served; the contract holds for each:
determinism in any batch, truncation where the model says it applies, style mixing only where
the model has style layers.
"""

from __future__ import annotations

import concurrent.futures
import pathlib
import time
from collections.abc import Callable

import grpc
import numpy as np
import pytest

from conftest import ServerThread, control_engine
from ganserve.client.client import GeneratorClient, ImageEncoding

FAMILIES = {
    "gan": {"architecture": "gan", "width": 16, "fc_layers": 2},
    "stylegan": {"architecture": "stylegan", "width": 8, "w_dim": 16, "mapping_layers": 2},
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A repository with a tiny conditional model of each family, names = family names."""
    from ganserve.export.pipeline import ExportConfig, export_checkpoint
    from ganserve.train.data import load_digits_split
    from ganserve.train.loop import TrainConfig, train
    from ganserve.train.networks import GeneratorConfig

    out = tmp_path_factory.mktemp("families")
    data, heldout = load_digits_split(32)
    for name, fields in FAMILIES.items():
        ckpt = out / f"{name}.pt"
        train(
            GeneratorConfig(latent_dim=16, embed_dim=8, num_classes=10, **fields),
            TrainConfig(steps=10, batch_size=16, log_every=5, eval_per_class=0),
            data,
            heldout,
            ckpt,
        )
        export_checkpoint(ckpt, ExportConfig(repository=out / "repo", name=name, max_batch=16))
    return out / "repo"


@pytest.fixture(scope="module")
def server(repo: pathlib.Path, start_server_module: Callable[..., ServerThread]) -> ServerThread:
    return start_server_module(repo, default_model="gan", max_queue_delay_us=2000)


@pytest.fixture(scope="module")
def client(server: ServerThread) -> GeneratorClient:
    return GeneratorClient(server.target)


def pixels(client: GeneratorClient, model: str, seed: int, label: int, **kw) -> np.ndarray:
    return client.generate(seed, label, model=model, encoding=ImageEncoding.RAW_UINT8, **kw).pixels


@pytest.mark.parametrize("model", list(FAMILIES))
def test_each_family_reports_what_it_is(client: GeneratorClient, model: str) -> None:
    info = client.model_info(model)
    assert info.architecture == model and (info.height, info.width) == (32, 32)
    assert info.truncation_mode == ("w" if model == "stylegan" else "z-scale")
    assert (info.style_layers > 0) == (model == "stylegan")


@pytest.mark.parametrize("model", list(FAMILIES))
def test_a_seed_is_the_same_image_alone_and_in_any_batch(client: GeneratorClient, model: str):
    alone = [pixels(client, model, seed, seed % 10) for seed in (3, 11, 12)]
    items = [(seed, seed % 10) for seed in range(16)]
    batch = client.generate_batch(items, model=model, encoding=ImageEncoding.RAW_UINT8)
    assert all(np.array_equal(alone[k], batch[s].pixels) for k, s in enumerate((3, 11, 12)))
    assert not np.array_equal(batch[0].pixels, batch[1].pixels)


@pytest.mark.parametrize("model", list(FAMILIES))
def test_a_walk_ends_exactly_at_both_seeds_images(client: GeneratorClient, model: str) -> None:
    """On the StyleGAN-style model the per-layer noise walks too: its last frame once kept
    seed_start's noise and differed from Generate(seed_end)."""
    frames = list(client.interpolate(1, 2, 5, 3, model=model, encoding=ImageEncoding.RAW_UINT8))
    assert np.array_equal(frames[0].pixels, pixels(client, model, 1, 3))
    assert np.array_equal(frames[-1].pixels, pixels(client, model, 2, 3))
    assert not np.array_equal(frames[2].pixels, frames[0].pixels)


def test_stylegan_truncation_zero_is_the_class_average_for_every_seed(
    client: GeneratorClient,
) -> None:
    images = [pixels(client, "stylegan", seed, 4, truncation=0.0) for seed in (1, 2, 99)]
    # Noise still differs per seed, so the images are close, not identical; untruncated ones
    # differ far more.
    spread = max(np.abs(a.astype(int) - images[0]).mean() for a in images[1:])
    free = [pixels(client, "stylegan", seed, 4) for seed in (1, 2, 99)]
    free_spread = max(np.abs(a.astype(int) - free[0]).mean() for a in free[1:])
    assert spread < free_spread


def test_style_mixing_changes_the_image_and_is_deterministic(client: GeneratorClient) -> None:
    layers = client.model_info("stylegan").style_layers
    plain = pixels(client, "stylegan", 5, 2)
    mixed = pixels(client, "stylegan", 5, 2, style_mix_seed=77, style_mix_layer=0)
    assert not np.array_equal(plain, mixed)
    assert np.array_equal(mixed, pixels(client, "stylegan", 5, 2, style_mix_seed=77))
    late = pixels(client, "stylegan", 5, 2, style_mix_seed=77, style_mix_layer=layers - 1)
    assert np.abs(late.astype(int) - plain).mean() < np.abs(mixed.astype(int) - plain).mean()
    with pytest.raises(grpc.RpcError) as info:
        pixels(client, "stylegan", 5, 2, style_mix_seed=77, style_mix_layer=layers)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"style layers 0..{layers - 1}" in info.value.details()


def test_style_mixing_is_refused_by_the_fully_connected_gan(client: GeneratorClient) -> None:
    with pytest.raises(grpc.RpcError) as info:
        pixels(client, "gan", 5, 2, style_mix_seed=77)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "(gan) has no style layers" in info.value.details()


def test_a_plain_request_batched_with_a_style_mixed_one_is_the_same_image(
    server: ServerThread, client: GeneratorClient
) -> None:
    """Plain and style-mixed requests share a batch: the plain one mixes nothing (z_mix = z at
    the last layer), whatever its batch-mates ask for."""
    alone = pixels(client, "stylegan", 5, 2)
    mixed_alone = pixels(client, "stylegan", 6, 2, style_mix_seed=77, style_mix_layer=0)
    control = control_engine(server, "stylegan")
    batcher = server.server.models.resolve("stylegan").batcher
    control.hold()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        try:
            blocker = pool.submit(pixels, client, "stylegan", 1, 1)  # holds the engine
            assert control.entered.wait(30)
            plain = pool.submit(pixels, client, "stylegan", 5, 2)
            mixed = pool.submit(
                pixels, client, "stylegan", 6, 2, style_mix_seed=77, style_mix_layer=0
            )
            deadline = time.monotonic() + 30
            while batcher.queue_depth < 2:  # both wait: they make the next batch together
                assert time.monotonic() < deadline, "the two requests never queued"
                time.sleep(0.005)
        finally:
            control.release()
        blocker.result(30)
        assert np.array_equal(plain.result(30), alone)
        assert np.array_equal(mixed.result(30), mixed_alone)
    assert control.batches[-1] == 2


def test_the_response_cache_tells_style_mixes_apart(
    repo: pathlib.Path, start_server: Callable[..., ServerThread], client: GeneratorClient
) -> None:
    """With the cache on, one seed and class asked plain, then mixed at the first layer, then at
    the last, then with another mix seed: a key missing the mix seed or layer would
    answer a later call with an earlier call's image. Each must be the image the server
    without a cache computes."""
    cached = start_server(repo, default_model="gan", cache_bytes=1 << 20)
    last = client.model_info("stylegan").style_layers - 1
    asks = [{}, {"style_mix_seed": 77}, {"style_mix_seed": 77, "style_mix_layer": last}]
    asks.append({"style_mix_seed": 78})
    with GeneratorClient(cached.target) as other:
        got = [pixels(other, "stylegan", 5, 2, **kw) for kw in asks]
    expected = [pixels(client, "stylegan", 5, 2, **kw) for kw in asks]
    assert all(np.array_equal(g, e) for g, e in zip(got, expected, strict=True))
    assert len({e.tobytes() for e in expected}) == len(asks)  # four different images
