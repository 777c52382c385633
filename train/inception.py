"""Standard FID from a local Inception weight file: nothing is downloaded, the user brings it.

Two files are accepted, the two FID tooling uses:

* pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``: TensorFlow's 2015-12-05 Inception
  graph (the one FID was defined with) as a PyTorch state dict. It is read with
  ``weights_only=True`` into the network below, whose layer names are the file's keys.
* NVIDIA's ``inception-2015-12-05.pt`` (StyleGAN2-ADA / StyleGAN3 metrics, clean-fid): a
  TorchScript module, called as ``detector(images_0_255, return_features=True)``.

Either way the features are the 2048 pool3 activations. Images are quantised to 8 bits first,
as the server's PNGs are, and grey images repeat to three channels.
"""

from __future__ import annotations

import pathlib
import zipfile
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ganserve.train.checkpoint import file_sha256

FEATURES = 2048
INPUT_SIZE = 299
PREPROCESS_VERSION = "u8-bilinear299-v1"
KINDS = {
    "state-dict": "pytorch-fid's pt_inception-2015-12-05-6726825d.pth",
    "torchscript": "NVIDIA's inception-2015-12-05.pt",
}


class InceptionError(ValueError):
    """The Inception weight file is missing, unreadable or not one of the two known files."""


class Conv(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, TensorFlow's) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], **kwargs: object):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _chain(x: torch.Tensor, *layers: nn.Module) -> torch.Tensor:
    for layer in layers:
        x = layer(x)
    return x


def _avg3(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool leaves padding out of the mean.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):
    """35x35: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = Conv(cin, 64, 1)
        self.branch5x5_1 = Conv(cin, 48, 1)
        self.branch5x5_2 = Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2 = Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, padding=1)
        self.branch_pool = Conv(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                _chain(x, self.branch5x5_1, self.branch5x5_2),
                _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
                self.branch_pool(_avg3(x)),
            ],
            1,
        )


class BlockB(nn.Module):
    """35x35 -> 17x17: strided 3x3 | 1x1-3x3-strided 3x3 | maxpool."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2 = Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
                F.max_pool2d(x, 3, stride=2),
            ],
            1,
        )


class BlockC(nn.Module):
    """17x17 with factorised 7x7 convolutions (1x7 and 7x1)."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        row, col = {"padding": (0, 3)}, {"padding": (3, 0)}
        self.branch1x1 = Conv(cin, 192, 1)
        self.branch7x7_1 = Conv(cin, c7, 1)
        self.branch7x7_2 = Conv(c7, c7, (1, 7), **row)
        self.branch7x7_3 = Conv(c7, 192, (7, 1), **col)
        self.branch7x7dbl_1 = Conv(cin, c7, 1)
        self.branch7x7dbl_2 = Conv(c7, c7, (7, 1), **col)
        self.branch7x7dbl_3 = Conv(c7, c7, (1, 7), **row)
        self.branch7x7dbl_4 = Conv(c7, c7, (7, 1), **col)
        self.branch7x7dbl_5 = Conv(c7, 192, (1, 7), **row)
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = [getattr(self, f"branch7x7dbl_{i}") for i in range(1, 6)]
        return torch.cat(
            [
                self.branch1x1(x),
                _chain(x, self.branch7x7_1, self.branch7x7_2, self.branch7x7_3),
                _chain(x, *double),
                self.branch_pool(_avg3(x)),
            ],
            1,
        )


class BlockD(nn.Module):
    """17x17 -> 8x8: 1x1-strided 3x3 | 1x1-1x7-7x1-strided 3x3 | maxpool."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = Conv(cin, 192, 1)
        self.branch3x3_2 = Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = Conv(cin, 192, 1)
        self.branch7x7x3_2 = Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = [getattr(self, f"branch7x7x3_{i}") for i in range(1, 5)]
        return torch.cat(
            [
                _chain(x, self.branch3x3_1, self.branch3x3_2),
                _chain(x, *seven),
                F.max_pool2d(x, 3, stride=2),
            ],
            1,
        )


class BlockE(nn.Module):
    """8x8 with split 1x3 / 3x1 outputs. The graph's last block pools with max, not average:
    a quirk of the 2015 graph that FID's numbers depend on."""

    def __init__(self, cin: int, *, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        row, col = {"padding": (0, 1)}, {"padding": (1, 0)}
        self.branch1x1 = Conv(cin, 320, 1)
        self.branch3x3_1 = Conv(cin, 384, 1)
        self.branch3x3_2a = Conv(384, 384, (1, 3), **row)
        self.branch3x3_2b = Conv(384, 384, (3, 1), **col)
        self.branch3x3dbl_1 = Conv(cin, 448, 1)
        self.branch3x3dbl_2 = Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = Conv(384, 384, (1, 3), **row)
        self.branch3x3dbl_3b = Conv(384, 384, (3, 1), **col)
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch3x3_1(x)
        double = _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(single),
                self.branch3x3_2b(single),
                self.branch3x3dbl_3a(double),
                self.branch3x3dbl_3b(double),
                self.branch_pool(pooled),
            ],
            1,
        )


class FIDInception(nn.Module):
    """(N, 3, 299, 299) in [-1, 1] -> (N, 2048) pool3 features. Attribute names are the keys of
    pytorch-fid's state dict; ``fc`` (1008 ImageNet logits) is there only so it loads whole."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = Conv(80, 192, 3)
        self.Mixed_5b = BlockA(192, 32)
        self.Mixed_5c = BlockA(256, 64)
        self.Mixed_5d = BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b = BlockC(768, 128)
        self.Mixed_6c = BlockC(768, 160)
        self.Mixed_6d = BlockC(768, 160)
        self.Mixed_6e = BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, max_pool=False)
        self.Mixed_7c = BlockE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURES, 1008)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, 3, 299, 299) -> (N, 64, 147, 147)
        x = _chain(x, self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3)
        x = F.max_pool2d(x, 3, stride=2)  # (N, 64, 73, 73)
        x = _chain(x, self.Conv2d_3b_1x1, self.Conv2d_4a_3x3)  # (N, 192, 71, 71)
        x = F.max_pool2d(x, 3, stride=2)  # (N, 192, 35, 35)
        # (N, 192, 35, 35) -> (N, 768, 17, 17)
        x = _chain(x, self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a)
        x = _chain(x, self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a)
        x = _chain(x, self.Mixed_7b, self.Mixed_7c)  # (N, 2048, 8, 8)
        return x.mean((2, 3))


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> (N, 3, H, W) float holding 0..255 integers, as a PNG holds."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W); got {tuple(images.shape)}")
    u8 = ((images.float() + 1) * 127.5).round().clamp(0, 255)
    return u8.expand(-1, 3, -1, -1) if u8.shape[1] == 1 else u8


class InceptionFeatures:
    """``features(images)``: (N, C, H, W) in [-1, 1] -> (N, 2048) float64 pool3 features."""

    def __init__(self, path: pathlib.Path, *, batch_size: int = 50) -> None:
        if not path.is_file():
            raise InceptionError(f"{path}: no such file (--inception takes {_known()})")
        self.path, self.batch_size = path, batch_size
        self.kind = "torchscript" if _is_torchscript(path) else "state-dict"
        self.sha256 = file_sha256(path)
        self._call = _load_torchscript(path) if self.kind == "torchscript" else _load_state(path)

    def info(self) -> dict[str, str]:
        return {"inception": KINDS[self.kind], "inception_sha256": self.sha256[:16]}

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        out = []
        for start in range(0, len(images), self.batch_size):
            try:
                feats = self._call(to_uint8_rgb(images[start : start + self.batch_size]))
            except RuntimeError as exc:  # a TorchScript module with another signature
                raise InceptionError(f"{self.path}: failed on a batch of images ({exc})") from None
            if feats.ndim != 2 or feats.shape[1] != FEATURES:
                raise InceptionError(
                    f"{self.path}: gave features of shape {tuple(feats.shape)}, not (N, "
                    f"{FEATURES}); is it {_known()}?"
                )
            out.append(feats.double().numpy())
        return np.concatenate(out)


def _known() -> str:
    return " or ".join(KINDS.values())


def _is_torchscript(path: pathlib.Path) -> bool:
    # torch.save writes a zip holding data.pkl; a TorchScript archive also holds code/.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _load_torchscript(path: pathlib.Path) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        detector = torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError) as exc:
        raise InceptionError(f"{path}: not a loadable TorchScript module ({exc})") from None
    # It takes 0..255 images of any size and resizes to 299 itself.
    return lambda u8: detector(u8, return_features=True)


def _load_state(path: pathlib.Path) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise InceptionError(
            f"{path}: not a readable weight file ({type(exc).__name__}); use {_known()}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InceptionError(f"{path}: holds no state dict of tensors; use {_known()}")
    net = FIDInception()
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    for problem, keys in (("missing", missing), ("unexpected", unexpected), ("misshapen", wrong)):
        if keys:
            shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            raise InceptionError(
                f"{path}: not pytorch-fid's Inception: {len(keys)} {problem} weights ({shown})"
            )
    net.load_state_dict(state, strict=False)
    net.eval().to(memory_format=torch.channels_last)  # 1.5x faster on CPU

    def features(u8: torch.Tensor) -> torch.Tensor:
        # pytorch-fid's input path: [0, 1], bilinear to 299x299, then to [-1, 1].
        x = F.interpolate(
            u8 / 255, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False
        )
        return net((2 * x - 1).contiguous(memory_format=torch.channels_last))

    return features
