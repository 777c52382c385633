"""Server configuration: frozen dataclasses, validated on construction, built at the edge.

Sources, later ones winning: built-in defaults < config file (TOML) < ``GANSERVE_*`` environment
variables < command-line flags. The file uses the flag names with underscores, and may hold
per-model tables:

    max_batch_size = 32
    cache_bytes = 67108864

    [models.digits]
    backend = "onnxruntime-cpu"
    versions = [1, 2]        # pin versions; default: the newest only
"""

from __future__ import annotations

import dataclasses
import enum
import math
import pathlib
import ssl
import tomllib
from collections.abc import Mapping
from typing import Any

from ganserve.serve.backends import Backend
from ganserve.serve.metadata import MAX_DIM
from ganserve.v1 import generator_pb2 as pb


class EventLoop(enum.Enum):
    """The event loop the server runs on (`ganserve.serve.loops`)."""

    AUTO = "auto"  # uvloop when installed, else asyncio's
    UVLOOP = "uvloop"
    ASYNCIO = "asyncio"


class LogFormat(enum.Enum):
    """How log records are written."""

    TEXT = "text"
    JSON = "json"


class LogLevel(enum.Enum):
    """The least severe log records written."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"

    @classmethod
    def _missing_(cls, value: object) -> LogLevel | None:
        """Any case: ``debug`` is DEBUG, as in Python's own logging.basicConfig(level=...)."""
        if isinstance(value, str) and value.upper() in cls.__members__:
            return cls[value.upper()]
        return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchingConfig:
    """How one model version's requests are grouped into engine calls.

    Args:
        max_batch_size: A batch closes as soon as it holds this many images.
        max_queue_delay_us: ...or when its oldest request has waited this long (microseconds),
            or sooner when a waiting request's deadline would pass otherwise.
            0 batches whatever is queued when an engine instance is free (Triton's default).
        max_queue_size: Images waiting beyond this many (a multi-image call counts each) are
            refused with RESOURCE_EXHAUSTED.
        instances: Engine instances per model version; batches run on them concurrently.
        preferred_batch_sizes: Sizes the engine is best at (a TensorRT profile's). A batch is
            padded up to the smallest preferred size that holds it, or split into preferred
            sizes when larger than all of them. Empty: run batches at their natural size.
        engine_timeout_s: A batch still in the engine after this many seconds fails with
            DEADLINE_EXCEEDED, and its engine instance is replaced by a fresh one, so a hung
            engine costs one batch, not the model.
        parallel_batch_us: With several instances: while a batch runs, a free instance starts
            another only once the waiting images are worth this much engine time
            (microseconds, from the max batch's time per image, measured at load; rounded down
            to whole images), or half a max batch waits; a request is held back at most 4 max
            batches' engine time. Every batch costs the event loop a fixed ~0.2 ms, so on a CPU
            many tiny concurrent batches of a light model cost more than the second instance
            gains, while a heavy model's single image is worth a batch of its own. 0: start a
            batch whenever an instance is free (Triton's dynamic batcher).
    """

    max_batch_size: int = 64
    max_queue_delay_us: int = 0
    max_queue_size: int = 4096
    instances: int = 1
    preferred_batch_sizes: tuple[int, ...] = ()
    engine_timeout_s: float = 30.0
    parallel_batch_us: int = 2000

    def __post_init__(self) -> None:
        _check_range("max_batch_size", self.max_batch_size, 1, 4096)
        _check_range("max_queue_delay_us", self.max_queue_delay_us, 0, 10_000_000)
        _check_range("max_queue_size", self.max_queue_size, 1, 10_000_000)
        _check_range("instances", self.instances, 1, 64)
        _check_range("parallel_batch_us", self.parallel_batch_us, 0, 10_000_000)
        if not 0.01 <= self.engine_timeout_s <= 3600:
            raise ValueError(
                f"engine_timeout must be in 0.01..3600 seconds, got {self.engine_timeout_s}"
            )
        for size in self.preferred_batch_sizes:
            if not 1 <= size <= self.max_batch_size:
                raise ValueError(
                    f"preferred_batch_sizes holds {size}; each must be in 1..max_batch_size "
                    f"({self.max_batch_size})"
                )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Per-model settings.

    Args:
        backend: Execution backend; AUTO picks the fastest available.
        versions: Versions to serve; empty serves the newest version only.
        precision: "fp32" serves model.onnx; "fp16" serves model.fp16.onnx (ONNX Runtime
            backends; a TensorRT plan has its own precision).
    """

    backend: Backend = Backend.AUTO
    versions: tuple[int, ...] = ()
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if any(v < 1 for v in self.versions):
            raise ValueError(f"versions must be positive integers, got {list(self.versions)}")
        if self.precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be fp32 or fp16, got {self.precision!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TlsConfig:
    """TLS for the gRPC port; with client_ca_file set, clients must present a certificate
    signed by it (mutual TLS).

    Args:
        cert_file: PEM server certificate chain.
        key_file: PEM private key of the certificate.
        client_ca_file: PEM CA bundle that client certificates must chain to, or None.
    """

    cert_file: pathlib.Path
    key_file: pathlib.Path
    client_ca_file: pathlib.Path | None = None

    def __post_init__(self) -> None:
        # Named as the config file and the environment name them (tls_cert, ...).
        for name, key in (
            ("cert_file", "tls_cert"),
            ("key_file", "tls_key"),
            ("client_ca_file", "tls_client_ca"),
        ):
            path = getattr(self, name)
            if path is None:
                continue
            if not path.is_file():
                problem = "is a directory, not a file" if path.is_dir() else "does not exist"
                raise ValueError(f"{key} {path} {problem}")
            try:  # one the server's user cannot read (a root-owned key, say) was a traceback
                path.read_bytes()
            except OSError as exc:
                raise ValueError(f"{key} {path} cannot be read: {exc.strerror}") from None
        # gRPC only says it cannot listen; read the files here to say what is wrong with them.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert_file, self.key_file, password=b"")
        except ssl.SSLError as exc:
            raise ValueError(
                f"tls_cert {self.cert_file} and tls_key {self.key_file} are not a PEM "
                f"certificate and its unencrypted private key ({exc.reason or exc})"
            ) from None
        if self.client_ca_file is not None:
            try:
                context.load_verify_locations(cafile=self.client_ca_file)
            except ssl.SSLError as exc:
                raise ValueError(
                    f"tls_client_ca {self.client_ca_file} holds no PEM CA certificate "
                    f"({exc.reason or exc})"
                ) from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Everything `ganserve serve` needs.

    Args:
        model_repository: Folder holding ``<name>/<version>/model.onnx`` trees.
        default_model: Model used when a request's ``model`` is empty; None means the only
            model in the repository (an error if there are several).
        models: Per-model backend and version pinning, by model name.
        backend: Backend for models without their own entry, or whose entry sets none.
        host, port: gRPC bind address; port 0 picks a free one (tests).
        metrics_host, metrics_port: Prometheus ``/metrics``; port 0 picks one, -1 disables.
        intra_op_threads: ONNX Runtime CPU threads per engine instance; 0 lets it choose.
        batching: Batching settings, the same for every model version.
        warmup: Run the batch sizes the engine will see before reporting SERVING (every size
            on a GPU backend; 1 and the max batch on the CPU, whose kernels do not specialise
            per shape; the preferred sizes when set).
        cache_bytes: Byte budget of the response cache; 0 disables it.
        max_items_per_call: Cap on GenerateBatch items and Interpolate frames (never more than
            max_queue_size, since a call's items are queued together).
        max_request_bytes: Largest request message accepted; at least a GenerateBatch request
            of max_items_per_call items at their largest (`batch_request_bytes`).
        concurrent_accepts: Pending accepts per Generator method beyond grpcio's one, so
            calls do not queue behind its accept loop (`ganserve.serve.accept`); 0 leaves
            grpcio's loop alone.
        shutdown_delay_s: On SIGTERM, keep serving this long after health turns NOT_SERVING,
            so load balancers stop sending traffic before the drain starts.
        drain_grace_s: Then, how long accepted requests may take to finish.
        max_connection_age_s: Ask each client connection to move on after this long (gRPC's
            GOAWAY, with its own +-10 % jitter; calls in flight finish on the old one), so
            clients resolving a name (a headless Service) find pods added since they
            connected; 0 keeps connections for good.
        tls: TLS settings, or None for plaintext.
        auth_token: Bearer token every RPC but health checks must carry; None disables auth.
        auth_token_file: The file ``auth_token`` was read from, if any: the server reads it
            again when it changes (`ganserve.serve.credentials`).
        engine_cache_dir: Writable folder for TensorRT engine caches.
        log_level: The least severe log records written.
        log_format: Text or JSON log lines.
        event_loop: uvloop, asyncio's own loop, or auto (uvloop when installed).
        access_log: Write one log line per request.
        admin: Serve the ModelAdmin service (list and reload models). Off by default; when
            on, it sits behind the bearer token like every other RPC. SIGHUP reloads either way.
    """

    model_repository: pathlib.Path
    default_model: str | None = None
    models: Mapping[str, ModelConfig] = dataclasses.field(default_factory=dict)
    backend: Backend = Backend.AUTO
    host: str = "0.0.0.0"
    port: int = 50051
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 8000
    intra_op_threads: int = 0
    batching: BatchingConfig = dataclasses.field(default_factory=BatchingConfig)
    warmup: bool = True
    cache_bytes: int = 0
    max_items_per_call: int = 1024
    max_request_bytes: int = 1024 * 1024
    concurrent_accepts: int = 32
    shutdown_delay_s: float = 0.0
    drain_grace_s: float = 10.0
    max_connection_age_s: float = 0.0
    tls: TlsConfig | None = None
    auth_token: str | None = None
    auth_token_file: pathlib.Path | None = None
    engine_cache_dir: pathlib.Path | None = None
    log_level: LogLevel = LogLevel.INFO
    log_format: LogFormat = LogFormat.TEXT
    event_loop: EventLoop = EventLoop.AUTO
    access_log: bool = False
    admin: bool = False

    def __post_init__(self) -> None:
        _check_range("port", self.port, 0, 65535)
        _check_range("metrics_port", self.metrics_port, -1, 65535)
        if self.metrics_port == self.port and self.port != 0:
            raise ValueError(f"port and metrics_port are both {self.port}; pick two ports")
        _check_range("intra_op_threads", self.intra_op_threads, 0, 1024)
        _check_range("cache_bytes", self.cache_bytes, 0, 2**40)
        _check_range("max_items_per_call", self.max_items_per_call, 1, 65536)
        _check_range("max_request_bytes", self.max_request_bytes, 1024, 2**30)
        _check_range("concurrent_accepts", self.concurrent_accepts, 0, 1024)
        self._check_request_fits()
        # Bounded, like the chart's schema: a delay of 1e300 s is finite but SIGTERM would
        # never end it.
        for name in ("shutdown_delay_s", "drain_grace_s"):
            if not 0 <= getattr(self, name) <= MAX_DRAIN_S:
                raise ValueError(
                    f"{name.removesuffix('_s')} must be in 0..{MAX_DRAIN_S} seconds, "
                    f"got {getattr(self, name)}"
                )
        age = self.max_connection_age_s
        if not (age == 0 or 1 <= age <= MAX_CONNECTION_AGE_S):  # 0.0004 s: a GOAWAY storm
            raise ValueError(
                f"max_connection_age must be 0 (off) or 1..{MAX_CONNECTION_AGE_S} seconds, "
                f"got {age}"
            )
        if self.auth_token is not None:
            check_token(self.auth_token)
        if self.auth_token_file is not None and self.auth_token is None:
            raise ValueError("auth_token_file is set but no auth_token was read from it")
        for name in ("host", "metrics_host"):
            value = getattr(self, name)
            if not value.strip("[]"):
                raise ValueError(f"{name} must be an address or host name, got an empty one")
            if not value.isascii() or not value.isprintable():
                raise ValueError(
                    f"{name} {value!r} must be an address or an ASCII host name (IDNA-encode "
                    "an international one)"
                )

    def _check_request_fits(self) -> None:
        """gRPC refuses a request over max_request_bytes before any handler runs, with a
        message that names neither setting: a GenerateBatch of as many items as a call may
        carry must fit, whatever seeds and labels they hold."""
        # A call's items are queued together: no call carries more than the queue holds.
        items = min(self.max_items_per_call, self.batching.max_queue_size)
        needed = batch_request_bytes(items)
        if needed <= self.max_request_bytes:
            return
        fits = (self.max_request_bytes - BATCH_REQUEST_BYTES) // BATCH_ITEM_BYTES
        if items == self.max_items_per_call:
            call = f"max_items_per_call ({items}) items"
        else:
            call = f"max_queue_size ({items}) items, the cap on max_items_per_call"
        raise ValueError(
            f"max_request_bytes {self.max_request_bytes} cannot hold a GenerateBatch of {call}: "
            f"at their largest that is {needed} bytes ({BATCH_REQUEST_BYTES} + "
            f"{BATCH_ITEM_BYTES} per item); raise max_request_bytes to at least {needed}, or "
            f"lower max_items_per_call to at most {fits}"
        )

    def model(self, name: str) -> ModelConfig:
        """The settings of model ``name``, falling back to the server-wide backend."""
        return self.models.get(name) or ModelConfig(backend=self.backend)


MAX_TOKEN_FILE_BYTES = 4096
MAX_DRAIN_S = 3600
MAX_CONNECTION_AGE_S = 86400  # gRPC takes milliseconds in a 32-bit int: 24.8 days at most
# The most bytes of a file name (Linux's NAME_MAX): model names and versions are folder names.
MAX_NAME_BYTES = 255


def largest_batch_request(items: int) -> pb.GenerateBatchRequest:
    """A GenerateBatch request of ``items`` items with every field at the largest wire size
    the server accepts: a model name and version of a folder name's full length, encoding and
    truncation set; per item, a seed of 2**64 - 1 (ten varint bytes) and the top class label a
    model may have (metadata.json's num_classes is at most MAX_DIM)."""
    item = pb.BatchItem(seed=2**64 - 1, class_label=MAX_DIM - 1)
    return pb.GenerateBatchRequest(
        items=[item] * items,
        model="m" * MAX_NAME_BYTES,
        model_version="9" * MAX_NAME_BYTES,
        encoding=pb.IMAGE_ENCODING_RAW_UINT8,
        truncation=2.0,
    )


# Serialised once: the request without items, and what each item adds (tag, length, fields).
BATCH_REQUEST_BYTES = largest_batch_request(0).ByteSize()
BATCH_ITEM_BYTES = largest_batch_request(1).ByteSize() - BATCH_REQUEST_BYTES


def batch_request_bytes(items: int) -> int:
    """The largest a GenerateBatch request of ``items`` items the server accepts can be."""
    return BATCH_REQUEST_BYTES + items * BATCH_ITEM_BYTES


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {value}")


# Keys a config file may hold at top level: the flat settings of ServerConfig, BatchingConfig
# and TlsConfig, under the same names as the flags (with underscores).
BATCHING_KEYS = {f.name for f in dataclasses.fields(BatchingConfig)}
TLS_KEYS = {"tls_cert": "cert_file", "tls_key": "key_file", "tls_client_ca": "client_ca_file"}
SERVER_KEYS = {f.name for f in dataclasses.fields(ServerConfig)} - {"batching", "tls", "models"}
# Settings whose flag name differs from the field: the file uses the flag's name.
FILE_ALIASES = {
    "shutdown_delay": "shutdown_delay_s",
    "drain_grace": "drain_grace_s",
    "max_connection_age": "max_connection_age_s",
    "engine_timeout": "engine_timeout_s",
}
FILE_KEYS = (
    ((SERVER_KEYS | BATCHING_KEYS) - set(FILE_ALIASES.values()))
    | set(FILE_ALIASES)
    | set(TLS_KEYS)
    | {"auth_token_file", "models"}
)
# The type every flat setting must have, from the dataclasses' annotations (strings here).
_FIELD_TYPES = {
    f.name: str(f.type) for cls in (ServerConfig, BatchingConfig) for f in dataclasses.fields(cls)
}
_FIELD_TYPES.update({k: "pathlib.Path | None" for k in TLS_KEYS} | {"auth_token_file": "str"})


def _typed(key: str, value: Any) -> Any:
    """``value`` checked against the setting's declared type; ValueError names the key."""
    kind = _FIELD_TYPES.get(key)
    if kind is None or value is None:
        return value
    base = kind.removesuffix(" | None")

    def wrong(expected: str) -> ValueError:  # named as the user wrote it: drain_grace
        name = next((alias for alias, field in FILE_ALIASES.items() if field == key), key)
        return ValueError(f"{name} must be {expected}, got {value!r}")

    if base == "bool":
        if not isinstance(value, bool):
            raise wrong("true or false")
    elif base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
    elif base == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong("a number")
        value = float(value)
        if not math.isfinite(value):
            raise wrong("a finite number")
    elif base == "tuple[int, ...]":
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise wrong("a list of integers")
        value = tuple(value)
    elif base in ("str", "pathlib.Path") and not isinstance(value, str | pathlib.Path):
        raise wrong("a string")
    return value


def read_config_file(path: pathlib.Path) -> dict[str, Any]:
    """Parse a TOML config file; unknown keys are errors that name the key and the file."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist") from None
    except RecursionError:
        raise ValueError(f"config file {path} is not valid TOML: nested too deeply") from None
    except (OSError, ValueError) as exc:  # TOMLDecodeError, UnicodeDecodeError, huge integers
        raise ValueError(f"config file {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - FILE_KEYS)
    if unknown:
        raise ValueError(f"config file {path}: unknown key(s) {', '.join(unknown)}")
    try:
        return {
            FILE_ALIASES.get(k, k): v if k == "models" else _typed(FILE_ALIASES.get(k, k), v)
            for k, v in data.items()
        }
    except ValueError as exc:
        raise ValueError(f"config file {path}: {exc}") from None


def _model_configs(raw: Any, backend: Backend) -> dict[str, ModelConfig]:
    """The [models.<name>] tables; a table without its own ``backend`` takes the server-wide
    one (a table pinning versions used to reset its model to auto, ignoring --backend)."""
    if not isinstance(raw, Mapping):
        raise ValueError("models must be a table of [models.<name>] tables")
    out = {}
    for name, table in raw.items():
        if not isinstance(table, Mapping):
            raise ValueError(f"models.{name} must be a table")
        unknown = sorted(set(table) - {"backend", "versions", "precision"})
        if unknown:
            raise ValueError(f"models.{name}: unknown key(s) {', '.join(unknown)}")
        try:
            model_backend = Backend(table["backend"]) if "backend" in table else backend
        except ValueError:
            choices = ", ".join(b.value for b in Backend)
            raise ValueError(
                f"models.{name}.backend {table['backend']!r} is not one of {choices}"
            ) from None
        versions = table.get("versions", [])
        if not isinstance(versions, list) or not all(type(v) is int for v in versions):
            raise ValueError(f"models.{name}.versions must be a list of integers")
        try:
            out[name] = ModelConfig(
                backend=model_backend,
                versions=tuple(versions),
                precision=table.get("precision", "fp32"),
            )
        except ValueError as exc:
            raise ValueError(f"models.{name}: {exc}") from None
    return out


def check_token(token: str) -> None:
    """ValueError unless ``token`` is one a client can send and an attacker cannot guess."""
    if len(token) < 16:
        raise ValueError("auth_token must be at least 16 characters")
    if not all(" " <= c <= "~" for c in token):
        raise ValueError(
            "auth_token must be printable ASCII: gRPC metadata cannot carry other "
            "characters, so no client could send it"
        )


def read_token(path: pathlib.Path) -> str:
    """The token in ``path``, stripped; ValueError names the file and what is wrong."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"auth_token_file {path}: {exc.strerror}") from None
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise ValueError(f"auth_token_file {path} is over {MAX_TOKEN_FILE_BYTES} bytes")
    try:
        return data.decode().strip()
    except UnicodeDecodeError:
        raise ValueError(f"auth_token_file {path} is not UTF-8 text") from None


def build_config(settings: Mapping[str, Any]) -> ServerConfig:
    """Build the ServerConfig from merged flat settings (file, env and flags already layered).

    Errors are ValueErrors naming the setting.
    """
    settings = {k: v if k == "models" else _typed(k, v) for k, v in settings.items()}
    token_file = settings.pop("auth_token_file", None)
    if token_file and settings.get("auth_token"):
        raise ValueError("set auth_token or auth_token_file, not both")
    if token_file:
        settings["auth_token"] = read_token(pathlib.Path(token_file))
        settings["auth_token_file"] = pathlib.Path(token_file)
    tls_values = {TLS_KEYS[k]: settings.pop(k) for k in list(TLS_KEYS) if k in settings}
    tls_values = {k: pathlib.Path(v) for k, v in tls_values.items() if v}
    tls = None
    if tls_values:
        if {"cert_file", "key_file"} - set(tls_values):
            raise ValueError("TLS needs both tls_cert and tls_key")
        tls = TlsConfig(**tls_values)
    batching = {k: settings.pop(k) for k in list(settings) if k in BATCHING_KEYS}
    unknown = sorted(set(settings) - SERVER_KEYS - {"models"})
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}")
    enums = (
        ("backend", Backend),
        ("log_level", LogLevel),
        ("log_format", LogFormat),
        ("event_loop", EventLoop),
    )
    for key, kind in enums:
        if key in settings and not isinstance(settings[key], kind):
            try:
                settings[key] = kind(settings[key])
            except ValueError:
                choices = ", ".join(x.value for x in kind)
                raise ValueError(f"{key} {settings[key]!r} is not one of {choices}") from None
    models = _model_configs(settings.pop("models", {}), settings.get("backend", Backend.AUTO))
    for key in ("model_repository", "engine_cache_dir"):
        if settings.get(key) is not None:
            settings[key] = pathlib.Path(settings[key])
    try:
        return ServerConfig(batching=BatchingConfig(**batching), tls=tls, models=models, **settings)
    except TypeError as exc:  # a value of the wrong type in the file
        raise ValueError(f"invalid setting: {exc}") from None
