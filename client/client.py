"""Blocking gRPC client for the ganserve.v1.Generator service."""

from __future__ import annotations

import dataclasses
import enum
import io
import pathlib

import grpc
import numpy as np
from PIL import Image

from ganserve.v1 import generator_pb2, generator_pb2_grpc


class ImageEncoding(enum.IntEnum):
    """How the server sends pixels; values match ``ganserve.v1.ImageEncoding``."""

    PNG = generator_pb2.IMAGE_ENCODING_PNG
    RAW_UINT8 = generator_pb2.IMAGE_ENCODING_RAW_UINT8


@dataclasses.dataclass(frozen=True)
class GeneratedImage:
    """One generated image and what produced it."""

    response: generator_pb2.GenerateResponse

    @property
    def pixels(self) -> np.ndarray:
        """(H, W, C) uint8 pixels, whatever the wire encoding."""
        r = self.response
        if r.encoding == ImageEncoding.RAW_UINT8:
            flat = np.frombuffer(r.image, dtype=np.uint8)
            return flat.reshape(r.height, r.width, r.channels)
        array = np.asarray(Image.open(io.BytesIO(r.image)))
        return array.reshape(r.height, r.width, r.channels)

    def save(self, path: str | pathlib.Path) -> None:
        """Write the image; the format follows the file suffix (``.png``, ``.jpg``, ...)."""
        r = self.response
        if r.encoding == ImageEncoding.PNG and str(path).lower().endswith(".png"):
            pathlib.Path(path).write_bytes(r.image)
            return
        pixels = self.pixels
        Image.fromarray(pixels[:, :, 0] if r.channels == 1 else pixels).save(path)


class GeneratorClient:
    """Calls one ganserve server. Errors surface as ``grpc.RpcError`` with the server's status.

    Args:
        target: ``host:port`` of the server.
        timeout: Default deadline of each call, in seconds.
    """

    def __init__(self, target: str, *, timeout: float = 10.0) -> None:
        self.target = target
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target)
        self._stub = generator_pb2_grpc.GeneratorStub(self._channel)

    def generate(
        self,
        seed: int,
        class_label: int | None = None,
        *,
        model: str = "",
        encoding: ImageEncoding = ImageEncoding.PNG,
        timeout: float | None = None,
    ) -> GeneratedImage:
        request = generator_pb2.GenerateRequest(seed=seed, model=model, encoding=encoding)
        if class_label is not None:
            request.class_label = class_label
        response = self._stub.Generate(request, timeout=timeout or self.timeout)
        return GeneratedImage(response)

    def model_info(
        self, model: str = "", *, timeout: float | None = None
    ) -> generator_pb2.ModelInfo:
        request = generator_pb2.GetModelInfoRequest(model=model)
        return self._stub.GetModelInfo(request, timeout=timeout or self.timeout)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GeneratorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
