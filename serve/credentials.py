"""The TLS key pair and the bearer token, read again when their files change.

cert-manager renews certificates, and Kubernetes updates a mounted Secret in place (it swaps a
symlink), so a server that read its credentials once would present an expired certificate, or
refuse the new token, until a restart. `Credentials.refresh` compares each file's (device,
inode, size, mtime) with what it last read; SIGHUP and a poll every `POLL_S` call it.

- TLS: the server's credentials are gRPC's dynamic ones. gRPC asks `_fetch` before every new
  handshake; it hands over a new key pair once, then None (no change). Connections already open
  keep theirs.
- Token: the interceptor's token is swapped; the next call is checked against the new one.

A new file that does not check out (a key that does not match its certificate, a token too
short) is logged and counted, and the server keeps what it has: a half-finished rotation must
not lock every client out. It is read again once it changes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
from collections.abc import Callable, Iterable

import grpc

from ganserve.serve.auth import BearerTokenInterceptor
from ganserve.serve.config import ServerConfig, TlsConfig, check_token, read_token
from ganserve.serve.metrics import ServerMetrics

LOGGER = logging.getLogger(__name__)
POLL_S = 10.0


def fingerprint(paths: Iterable[pathlib.Path | None]) -> tuple:
    """What changes when a file is rewritten or its symlink swapped; None for a missing file."""
    out = []
    for path in paths:
        try:
            st = os.stat(path) if path is not None else None
        except OSError:
            st = None
        out.append(st and (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _tls_paths(tls: TlsConfig) -> tuple[pathlib.Path | None, ...]:
    return (tls.cert_file, tls.key_file, tls.client_ca_file)


def _certificate_configuration(
    tls: TlsConfig,
) -> tuple[grpc.ServerCertificateConfiguration, tuple]:
    """gRPC's configuration from the files, checked; ValueError when they do not make a pair or
    change while being read (the next refresh reads them again)."""
    before = fingerprint(_tls_paths(tls))
    cert, key = tls.cert_file.read_bytes(), tls.key_file.read_bytes()
    client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    TlsConfig(**vars(tls))  # the same checks as at start-up, which name the file at fault
    if fingerprint(_tls_paths(tls)) != before:
        raise ValueError("the files changed while being read")
    configuration = grpc.ssl_server_certificate_configuration(
        [(key, cert)], root_certificates=client_ca
    )
    return configuration, before


class Credentials:
    """The server's TLS credentials and bearer-token interceptor, and their rotation."""

    def __init__(self, config: ServerConfig, metrics: ServerMetrics) -> None:
        self._tls = config.tls
        self._metrics = metrics
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self.interceptor = (
            BearerTokenInterceptor(config.auth_token, metrics.auth_failures.inc)
            if config.auth_token
            else None
        )
        # Per credential: its files, how to load them, and the fingerprints last read and last
        # refused (a refused file is read again once it changes again).
        self._files: dict[str, tuple[pathlib.Path | None, ...]] = {}
        self._loaders: dict[str, Callable[[], None]] = {}
        if config.tls is not None:
            self._files["tls"], self._loaders["tls"] = _tls_paths(config.tls), self._load_tls
        if config.auth_token_file is not None and self.interceptor is not None:
            self._files["token"] = (config.auth_token_file,)
            self._loaders["token"] = self._load_token
        self._seen = {name: fingerprint(paths) for name, paths in self._files.items()}
        self._refused: dict[str, tuple] = {}

    def watched(self) -> bool:
        """Whether any credential comes from files that could change."""
        return bool(self._files)

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """For ``add_secure_port``; None means plaintext."""
        if self._tls is None:
            return None
        configuration, self._seen["tls"] = _certificate_configuration(self._tls)
        return grpc.dynamic_ssl_server_credentials(
            configuration,
            self._fetch,
            require_client_authentication=self._tls.client_ca_file is not None,
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC's threads before each handshake: hand a new pair over once.
        configuration, self._pending = self._pending, None
        return configuration

    def refresh(self) -> list[str]:
        """Read again whatever changed; the names of the credentials replaced."""
        changed = []
        for name, paths in self._files.items():
            now = fingerprint(paths)
            if now in (self._seen[name], self._refused.get(name)):
                continue
            try:
                self._loaders[name]()
            except (OSError, ValueError) as exc:
                LOGGER.error(
                    "the %s files changed but cannot be used; keeping the old: %s", name, exc
                )
                self._metrics.credential_reloads.labels(name, "failed").inc()
                self._refused[name] = now  # changed again while read: differs, so read again
                continue
            self._seen[name] = now
            self._metrics.credential_reloads.labels(name, "ok").inc()
            changed.append(name)
            LOGGER.info("%s reloaded from its changed files", name)
        return changed

    def _load_tls(self) -> None:
        assert self._tls is not None
        self._pending, _ = _certificate_configuration(self._tls)

    def _load_token(self) -> None:
        assert self.interceptor is not None
        (path,) = self._files["token"]
        before = fingerprint([path])
        token = read_token(path)
        check_token(token)
        if fingerprint([path]) != before:
            raise ValueError(f"auth_token_file {path} changed while being read")
        self.interceptor.token = token

    async def watch(self) -> None:
        """Refresh every `POLL_S` until cancelled."""
        while True:
            await asyncio.sleep(POLL_S)
            self.refresh()
