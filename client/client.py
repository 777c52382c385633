"""Blocking gRPC client for ganserve: Generator and ModelAdmin services.

Retries happen inside gRPC (a service-config retry policy), on UNAVAILABLE: the status of a
draining or restarting replica, where the call never started; and, when the policy asks for it,
on RESOURCE_EXHAUSTED (a full queue), after the wait the server asks for. Every other status is
final.

Every call carries an ``x-request-id`` (the caller's, or one made up here), which the server
writes on each log line about the call: results carry it as ``request_id``, and so does a
failed call's ``grpc.RpcError``.

Arguments are checked before anything is sent: a value the wire cannot carry (a negative seed, a
label over int32, a non-ASCII token) raises ValueError or TypeError naming the argument. What
only the model can judge (is class 12 one of its classes?) is left to the server.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import json
import math
import operator
import pathlib
import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import grpc
import numpy as np
from PIL import Image

from ganserve.client import arguments
from ganserve.client.arguments import check_target
from ganserve.v1 import admin_pb2, admin_pb2_grpc, generator_pb2, generator_pb2_grpc


class ReplyError(ValueError):
    """A reply that breaks the contract (docs/api.md), such as too few images."""


class ImageEncoding(enum.IntEnum):
    """How the server sends pixels; values match ``ganserve.v1.ImageEncoding``."""

    PNG = generator_pb2.IMAGE_ENCODING_PNG
    RAW_UINT8 = generator_pb2.IMAGE_ENCODING_RAW_UINT8


_ENCODINGS = {e.value: e.name for e in ImageEncoding}


def _pixels(data: bytes, encoding: int, height: int, width: int, channels: int) -> np.ndarray:
    try:
        if encoding == ImageEncoding.RAW_UINT8:
            return np.frombuffer(data, dtype=np.uint8).reshape(height, width, channels)
        return np.asarray(Image.open(io.BytesIO(data))).reshape(height, width, channels)
    except (OSError, ValueError) as exc:  # Pillow's decoders raise both; reshape, ValueError
        raise ReplyError(
            f"cannot read an image in the reply as {height}x{width}x{channels} "
            f"{_ENCODINGS.get(encoding, encoding)}: {exc}"
        ) from None


@dataclasses.dataclass(frozen=True)
class GeneratedImage:
    """One generated image (a GenerateResponse or an InterpolateFrame) and what produced it.

    ``request_id``: the call's ``x-request-id`` as the server echoed it (Interpolate frames,
    which arrive before the echo, carry the id that was sent), to find the call in its logs.
    """

    response: generator_pb2.GenerateResponse | generator_pb2.InterpolateFrame
    request_id: str = ""

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
    """gRPC transparent retries, on UNAVAILABLE (and RESOURCE_EXHAUSTED with
    ``retry_queue_full``). Values gRPC's retry policy would refuse (which fails every call)
    raise ValueError here.

    Args:
        max_attempts: Attempts per call, the first included: 2..5 (gRPC's limits; pass
            ``retry=None`` to the client for no retries).
        initial_backoff_s, max_backoff_s: Backoff bounds in seconds, 0.001..315576000000 (gRPC
            counts whole milliseconds).
        multiplier: Backoff growth per attempt, > 0 (exponential backoff with jitter).
        retry_queue_full: Also retry RESOURCE_EXHAUSTED, which ganserve answers when a model's
            queue is full. Generation is deterministic, so a retry is safe; the server says
            how long to wait (gRPC's retry pushback, spread so that callers refused together
            come back apart), which replaces the backoff. Off by default: each retry adds
            load to a server that is already full, up to ``max_attempts`` times the calls.
            gRPC's own RESOURCE_EXHAUSTED (a message over a size limit) is retried too, in
            vain.
    """

    max_attempts: int = 4
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    multiplier: float = 2.0
    retry_queue_full: bool = False

    def __post_init__(self) -> None:
        low, high = arguments.MAX_ATTEMPTS
        attempts = arguments.as_int("max_attempts", self.max_attempts)
        if not low <= attempts <= high:
            raise ValueError(
                f"max_attempts {attempts} is out of range: use {low}..{high} (gRPC's limits, "
                "the first attempt included); for no retries pass retry=None to the client"
            )
        shortest, longest = arguments.MIN_BACKOFF_S, arguments.MAX_DURATION_S
        for name in ("initial_backoff_s", "max_backoff_s"):
            value = getattr(self, name)
            if not shortest <= arguments.real(name, value) <= longest:  # False for nan
                raise ValueError(
                    f"{name} {value!r} is out of range: use {shortest}..{longest} seconds "
                    "(gRPC counts backoff in whole milliseconds)"
                )
        multiplier = arguments.real("multiplier", self.multiplier)
        if not (math.isfinite(multiplier) and arguments.float32(multiplier) > 0):
            raise ValueError(
                f"multiplier {self.multiplier!r} is out of range: use a finite number > 0 "
                "(at least 1.4e-45: gRPC reads it as a 32-bit float)"
            )
        if not isinstance(self.retry_queue_full, bool):
            raise TypeError(f"retry_queue_full must be a bool, got {self.retry_queue_full!r}")

    def service_config(self) -> str:
        methods = [{"service": "ganserve.v1.Generator"}, {"service": "ganserve.v1.ModelAdmin"}]
        return json.dumps(
            {
                "methodConfig": [
                    {
                        "name": methods,
                        "retryPolicy": {
                            "maxAttempts": operator.index(self.max_attempts),
                            "initialBackoff": arguments.duration(float(self.initial_backoff_s)),
                            "maxBackoff": arguments.duration(float(self.max_backoff_s)),
                            "backoffMultiplier": float(self.multiplier),
                            "retryableStatusCodes": ["UNAVAILABLE"]
                            + (["RESOURCE_EXHAUSTED"] if self.retry_queue_full else []),
                        },
                    }
                ]
            }
        )


def _echoed(call: Any, sent: str) -> str:
    """The ``x-request-id`` the server sent back in the call's trailers, else ``sent``."""
    trailers = getattr(call, "trailing_metadata", lambda: None)() or ()
    return next((v for k, v in trailers if k == "x-request-id" and v), sent)


class GeneratorClient:
    """Calls one ganserve server. Errors surface as ``grpc.RpcError`` with the server's status;
    arguments the wire cannot carry raise ValueError or TypeError naming them, before any call.

    Args:
        target: ``host:port`` of the server.
        timeout: Default deadline of each call, in seconds (> 0, at most 1e9).
        retry: Retry policy (UNAVAILABLE only); None disables retries.
        token: Bearer token, sent as ``authorization`` metadata.
        root_certificates: PEM CA bundle for TLS; with it the channel is secure.
        client_certificate, client_key: PEM client certificate and key for mutual TLS.
        server_name: The name the server's certificate must carry, when it is not the target's
            host (a port-forward to ``localhost``, an address); TLS only.
        request_id: Sent as ``x-request-id`` on every call that gives none of its own (each
            method's ``request_id=``), to find the calls in server logs; without either, each
            call gets a fresh random id.

    ``token`` and request ids travel as gRPC metadata, so they must be printable ASCII. A
    failed call raises ``grpc.RpcError`` with a ``request_id`` attribute: the id the server
    echoed, or the one sent when no reply carried it (a deadline that passed here, say).
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
        server_name: str | None = None,
        request_id: str | None = None,
    ) -> None:
        check_target(target)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy or None, got {retry!r}")
        for name, pem in (
            ("root_certificates", root_certificates),
            ("client_certificate", client_certificate),
            ("client_key", client_key),
        ):
            if pem is not None and not (isinstance(pem, bytes) and pem):
                raise TypeError(f"{name} must be non-empty PEM bytes, got {type(pem).__name__}")
        # gRPC aborts the whole process (a failed CHECK) on half a pair.
        if (client_certificate is None) != (client_key is None):
            raise ValueError("client_certificate and client_key go together: give both or neither")
        tls = root_certificates is not None or client_certificate is not None
        if server_name is not None:
            arguments.server_name(server_name)
            if not tls:
                raise ValueError("server_name is the name a TLS certificate carries: it needs TLS")
        if token is not None:
            arguments.metadata_value("token", token)
        if request_id is not None:
            arguments.metadata_value("request_id", request_id)
        self.target = target
        self.tls = tls
        self.timeout = arguments.timeout(timeout)
        options = [
            ("grpc.max_receive_message_length", 256 * 1024 * 1024),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.enable_retries", 1 if retry else 0),
            # A name with several addresses (a headless Service: one per pod) spreads calls
            # over all of them; gRPC's default, pick_first, sends every call to the first.
            ("grpc.lb_policy_name", "round_robin"),
        ]
        if retry:
            options.append(("grpc.service_config", retry.service_config()))
        if server_name is not None:
            options.append(("grpc.ssl_target_name_override", server_name))
        if tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root_certificates,
                private_key=client_key,
                certificate_chain=client_certificate,
            )
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._metadata: tuple[tuple[str, str], ...] = ()
        if token:
            self._metadata = (("authorization", f"Bearer {token}"),)
        self._request_id = request_id or None
        self._stub = generator_pb2_grpc.GeneratorStub(self._channel)
        self._admin = admin_pb2_grpc.ModelAdminStub(self._channel)

    def _kwargs(self, timeout: float | None, request_id: str | None) -> tuple[dict, str]:
        """The call's keyword arguments, and the request id they send."""
        # `timeout or self.timeout` would turn timeout=0 into the default in silence.
        seconds = self.timeout if timeout is None else arguments.timeout(timeout)
        if request_id:
            arguments.metadata_value("request_id", request_id)
        else:  # as the server makes them up
            request_id = self._request_id or f"{random.getrandbits(64):016x}"
        metadata = (*self._metadata, ("x-request-id", request_id))
        return {"timeout": seconds, "metadata": metadata}, request_id

    def _unary(
        self, method: Any, request: Any, timeout: float | None, request_id: str | None
    ) -> tuple[Any, str]:
        """Call a unary method; return its response and the request id the server echoed."""
        kwargs, sent = self._kwargs(timeout, request_id)
        try:
            response, call = method.with_call(request, **kwargs)
        except grpc.RpcError as exc:
            exc.request_id = _echoed(exc, sent)  # type: ignore[attr-defined]
            raise
        return response, _echoed(call, sent)

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
        request_id: str | None = None,
    ) -> GeneratedImage:
        """One image; style_mix_* mix a second seed's style in (StyleGAN-style models)."""
        request = generator_pb2.GenerateRequest(
            seed=arguments.integer("seed", seed, arguments.UINT64),
            model=arguments.text("model", model),
            model_version=arguments.text("model_version", model_version),
            encoding=arguments.encoding(encoding),
            class_label=arguments.optional_label("class_label", class_label),
            truncation=arguments.truncation(truncation),
            style_mix_seed=(
                None
                if style_mix_seed is None
                else arguments.integer("style_mix_seed", style_mix_seed, arguments.UINT64)
            ),
            style_mix_layer=arguments.integer("style_mix_layer", style_mix_layer, arguments.INT32),
        )
        response, echoed = self._unary(self._stub.Generate, request, timeout, request_id)
        return GeneratedImage(response, echoed)

    def generate_batch(
        self,
        items: Iterable[tuple[int, int | None]],
        *,
        model: str = "",
        model_version: str = "",
        encoding: ImageEncoding = ImageEncoding.PNG,
        truncation: float | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> list[GeneratedImage]:
        """One image per (seed, class_label) pair, in order, in one round trip."""
        request = generator_pb2.GenerateBatchRequest(
            items=arguments.batch_items(items),
            model=arguments.text("model", model),
            model_version=arguments.text("model_version", model_version),
            encoding=arguments.encoding(encoding),
            truncation=arguments.truncation(truncation),
        )
        response, echoed = self._unary(self._stub.GenerateBatch, request, timeout, request_id)
        if len(response.images) != len(request.items):  # the contract: one image per item
            raise ReplyError(
                f"the server answered {len(response.images)} images for {len(request.items)} "
                f"items: it is not keeping ganserve's contract (request id {echoed})"
            )
        return [GeneratedImage(r, echoed) for r in response.images]

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
        request_id: str | None = None,
    ) -> Iterator[GeneratedImage]:
        """Frames of the walk from seed_start to seed_end, streamed in order. Arguments are
        checked here; the call starts at the first ``next()``."""
        request = generator_pb2.InterpolateRequest(
            seed_start=arguments.integer("seed_start", seed_start, arguments.UINT64),
            seed_end=arguments.integer("seed_end", seed_end, arguments.UINT64),
            frames=arguments.integer("frames", frames, arguments.INT32),
            class_label=arguments.optional_label("class_label", class_label),
            model=arguments.text("model", model),
            model_version=arguments.text("model_version", model_version),
            encoding=arguments.encoding(encoding),
            truncation=arguments.truncation(truncation),
        )
        return self._frames(request, *self._kwargs(timeout, request_id))

    def _frames(
        self, request: generator_pb2.InterpolateRequest, kwargs: dict, sent: str
    ) -> Iterator[GeneratedImage]:
        try:
            for frame in self._stub.Interpolate(request, **kwargs):
                yield GeneratedImage(frame, sent)
        except grpc.RpcError as exc:
            exc.request_id = _echoed(exc, sent)  # type: ignore[attr-defined]
            raise

    def model_info(
        self,
        model: str = "",
        *,
        model_version: str = "",
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> generator_pb2.ModelInfo:
        """What ``model`` (at ``model_version``; default: the newest) takes and returns."""
        request = generator_pb2.GetModelInfoRequest(
            model=arguments.text("model", model),
            model_version=arguments.text("model_version", model_version),
        )
        return self._unary(self._stub.GetModelInfo, request, timeout, request_id)[0]

    def list_models(
        self, *, timeout: float | None = None, request_id: str | None = None
    ) -> Sequence[admin_pb2.ModelStatus]:
        request = admin_pb2.ListModelsRequest()
        return self._unary(self._admin.ListModels, request, timeout, request_id)[0].models

    def reload_models(
        self, *, timeout: float | None = None, request_id: str | None = None
    ) -> admin_pb2.ReloadModelsResponse:
        # A reload loads and warms up models: it gets at least 120 s unless a timeout is given.
        if timeout is None:
            timeout = max(self.timeout, 120.0)
        request = admin_pb2.ReloadModelsRequest()
        return self._unary(self._admin.ReloadModels, request, timeout, request_id)[0]

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GeneratorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
