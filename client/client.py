"""Blocking gRPC client for ganserve: Generator and ModelAdmin services.

Retries happen inside gRPC (a service-config retry policy), only on UNAVAILABLE: the status of
a draining or restarting replica, where the call never started. Every other status is final.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import json
import pathlib
import re
from collections.abc import Iterable, Iterator, Sequence

import grpc
import numpy as np
from PIL import Image

from ganserve.v1 import admin_pb2, admin_pb2_grpc, generator_pb2, generator_pb2_grpc


def check_target(target: str) -> None:
    """Raise ValueError for a host:port whose port gRPC cannot dial: it would wrap 99999 around
    to another port (99999 - 65536) instead of failing. Other target forms pass unchecked."""
    match = re.fullmatch(r"(\[[^\]]*\]|[^:/\[\]]*):(\d+)", target)
    if match and not 1 <= int(match[2]) <= 65535:
        raise ValueError(f"port {match[2]} is not in 1..65535")


class ImageEncoding(enum.IntEnum):
    """How the server sends pixels; values match ``ganserve.v1.ImageEncoding``."""

    PNG = generator_pb2.IMAGE_ENCODING_PNG
    RAW_UINT8 = generator_pb2.IMAGE_ENCODING_RAW_UINT8


def _pixels(data: bytes, encoding: int, height: int, width: int, channels: int) -> np.ndarray:
    if encoding == ImageEncoding.RAW_UINT8:
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width, channels)
    return np.asarray(Image.open(io.BytesIO(data))).reshape(height, width, channels)


@dataclasses.dataclass(frozen=True)
class GeneratedImage:
    """One generated image (a GenerateResponse or an InterpolateFrame) and what produced it."""

    response: generator_pb2.GenerateResponse | generator_pb2.InterpolateFrame

    @property
    def pixels(self) -> np.ndarray:
        """(H, W, C) uint8 pixels, whatever the wire encoding."""
        r = self.response
        return _pixels(r.image, r.encoding, r.height, r.width, r.channels)

    def to_pil(self) -> Image.Image:
        pixels = self.pixels
        return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)

    def save(self, path: str | pathlib.Path) -> None:
        """Write the image; the format follows the file suffix (``.png``, ``.jpg``, ...)."""
        r = self.response
        if r.encoding == ImageEncoding.PNG and str(path).lower().endswith(".png"):
            pathlib.Path(path).write_bytes(r.image)
        else:
            self.to_pil().save(path)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """gRPC transparent retries, on UNAVAILABLE only.

    Args:
        max_attempts: Attempts per call, the first included (gRPC caps this at 5).
        initial_backoff_s, max_backoff_s, multiplier: Exponential backoff with jitter.
    """

    max_attempts: int = 4
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    multiplier: float = 2.0

    def service_config(self) -> str:
        methods = [{"service": "ganserve.v1.Generator"}, {"service": "ganserve.v1.ModelAdmin"}]
        return json.dumps(
            {
                "methodConfig": [
                    {
                        "name": methods,
                        "retryPolicy": {
                            "maxAttempts": self.max_attempts,
                            "initialBackoff": f"{self.initial_backoff_s}s",
                            "maxBackoff": f"{self.max_backoff_s}s",
                            "backoffMultiplier": self.multiplier,
                            "retryableStatusCodes": ["UNAVAILABLE"],
                        },
                    }
                ]
            }
        )


class GeneratorClient:
    """Calls one ganserve server. Errors surface as ``grpc.RpcError`` with the server's status.

    Args:
        target: ``host:port`` of the server.
        timeout: Default deadline of each call, in seconds.
        retry: Retry policy (UNAVAILABLE only); None disables retries.
        token: Bearer token, sent as ``authorization`` metadata.
        root_certificates: PEM CA bundle for TLS; with it the channel is secure.
        client_certificate, client_key: PEM client certificate and key for mutual TLS.
        request_id: Sent as ``x-request-id`` on every call, to find the calls in server logs.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = RetryPolicy(),
        token: str | None = None,
        root_certificates: bytes | None = None,
        client_certificate: bytes | None = None,
        client_key: bytes | None = None,
        request_id: str | None = None,
    ) -> None:
        check_target(target)
        self.target = target
        self.timeout = timeout
        options = [
            ("grpc.max_receive_message_length", 256 * 1024 * 1024),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.enable_retries", 1 if retry else 0),
        ]
        if retry:
            options.append(("grpc.service_config", retry.service_config()))
        if root_certificates is not None or client_certificate is not None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root_certificates,
                private_key=client_key,
                certificate_chain=client_certificate,
            )
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._metadata: list[tuple[str, str]] = []
        if token:
            self._metadata.append(("authorization", f"Bearer {token}"))
        if request_id:
            self._metadata.append(("x-request-id", request_id))
        self._stub = generator_pb2_grpc.GeneratorStub(self._channel)
        self._admin = admin_pb2_grpc.ModelAdminStub(self._channel)

    def _kwargs(self, timeout: float | None) -> dict:
        return {"timeout": timeout or self.timeout, "metadata": self._metadata or None}

    def generate(
        self,
        seed: int,
        class_label: int | None = None,
        *,
        model: str = "",
        model_version: str = "",
        encoding: ImageEncoding = ImageEncoding.PNG,
        truncation: float | None = None,
        style_mix_seed: int | None = None,
        style_mix_layer: int = 0,
        timeout: float | None = None,
    ) -> GeneratedImage:
        """One image; style_mix_* mix a second seed's style in (StyleGAN-style models)."""
        request = generator_pb2.GenerateRequest(
            seed=seed,
            model=model,
            model_version=model_version,
            encoding=encoding,
            class_label=class_label,
            truncation=truncation,
            style_mix_seed=style_mix_seed,
            style_mix_layer=style_mix_layer,
        )
        return GeneratedImage(self._stub.Generate(request, **self._kwargs(timeout)))

    def generate_batch(
        self,
        items: Iterable[tuple[int, int | None]],
        *,
        model: str = "",
        model_version: str = "",
        encoding: ImageEncoding = ImageEncoding.PNG,
        truncation: float | None = None,
        timeout: float | None = None,
    ) -> list[GeneratedImage]:
        """One image per (seed, class_label) pair, in order, in one round trip."""
        request = generator_pb2.GenerateBatchRequest(
            items=[generator_pb2.BatchItem(seed=s, class_label=c) for s, c in items],
            model=model,
            model_version=model_version,
            encoding=encoding,
            truncation=truncation,
        )
        response = self._stub.GenerateBatch(request, **self._kwargs(timeout))
        return [GeneratedImage(r) for r in response.images]

    def interpolate(
        self,
        seed_start: int,
        seed_end: int,
        frames: int,
        class_label: int | None = None,
        *,
        model: str = "",
        model_version: str = "",
        encoding: ImageEncoding = ImageEncoding.PNG,
        truncation: float | None = None,
        timeout: float | None = None,
    ) -> Iterator[GeneratedImage]:
        """Frames of the walk from seed_start to seed_end, streamed in order."""
        request = generator_pb2.InterpolateRequest(
            seed_start=seed_start,
            seed_end=seed_end,
            frames=frames,
            class_label=class_label,
            model=model,
            model_version=model_version,
            encoding=encoding,
            truncation=truncation,
        )
        for frame in self._stub.Interpolate(request, **self._kwargs(timeout)):
            yield GeneratedImage(frame)

    def model_info(
        self, model: str = "", *, timeout: float | None = None
    ) -> generator_pb2.ModelInfo:
        request = generator_pb2.GetModelInfoRequest(model=model)
        return self._stub.GetModelInfo(request, **self._kwargs(timeout))

    def list_models(self, *, timeout: float | None = None) -> Sequence[admin_pb2.ModelStatus]:
        return self._admin.ListModels(admin_pb2.ListModelsRequest(), **self._kwargs(timeout)).models

    def reload_models(self, *, timeout: float | None = None) -> admin_pb2.ReloadModelsResponse:
        return self._admin.ReloadModels(
            admin_pb2.ReloadModelsRequest(), **self._kwargs(timeout or max(self.timeout, 120.0))
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GeneratorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
