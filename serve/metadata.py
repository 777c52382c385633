"""The metadata file written next to every model.onnx: the schema export writes and serve reads."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any

from ganserve.serve.errors import ModelLoadError
from ganserve.serve.latent import LATENT_SCHEME

METADATA_FILE = "metadata.json"
MODEL_FILE = "model.onnx"
FP16_MODEL_FILE = "model.fp16.onnx"
PLAN_FILE = "model.plan"  # TensorRT engine built by export-gan
FORMAT_VERSION = 1


TRUNCATION_MODES = ("z-scale", "w")
# Far above any generator served in one piece; bounds what warm-up and checks allocate.
MAX_DIM = 1 << 20


_JSON_TYPES = {
    bool: "a boolean",
    type(None): "null",
    str: "a string",
    int: "an integer",
    float: "a number",
    list: "a list",
    dict: "an object",
}


def is_utf8(text: str) -> bool:
    """False for a str holding lone surrogates: undecodable bytes of a file name
    (``os.fsdecode``), or a ``\\udcff`` escape in JSON. Nothing can encode them as UTF-8."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _check_types(data: dict[str, Any]) -> None:
    """Raise ValueError naming the first field whose JSON type is wrong."""

    def wrong(name: str, expected: str) -> ValueError:
        value = data[name]
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        return ValueError(
            f"field {name} must be {expected}, got {_JSON_TYPES[type(value)]} {shown}"
        )

    for name, kind in _FIELD_TYPES.items():
        if name not in data:
            continue
        value = data[name]
        if kind is int and (type(value) is not int or not 0 <= value <= MAX_DIM):
            raise wrong(name, f"an integer in 0..{MAX_DIM}")
        if kind is str and not isinstance(value, str):
            raise wrong(name, "a string")
        if kind is dict and not isinstance(value, dict):
            raise wrong(name, "a JSON object")
    names = data.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise wrong("class_names", "a list of strings")
    bounds = data.get("value_range", [-1.0, 1.0])
    if (
        not isinstance(bounds, list)
        or len(bounds) != 2
        or not all(type(b) in (int, float) and math.isfinite(b) for b in bounds)
    ):
        raise wrong("value_range", "a list of two finite numbers")
    if [float(b) for b in bounds] != [-1.0, 1.0]:
        # The server maps [-1, 1] to 0..255 (serve/imaging.py); another range would come out
        # wrong with no error.
        raise wrong("value_range", "[-1, 1], the only output range the server converts")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelMetadata:
    """What a served model takes and returns.

    Args:
        name: Model name, as requests address it.
        version: Version folder name (a positive integer, as a string).
        latent_dim: Length of the latent vector z.
        num_classes: Number of class labels; 0 for an unconditional model.
        class_names: One name per class (empty when unconditional).
        height, width, channels: Output image shape.
        latent_scheme: Name of the seed->latent mapping (see `ganserve.serve.latent`).
        architecture: Generator family: "dcgan", "gan" (Goodfellow et al.'s fully-connected
            one) or "stylegan".
        truncation_mode: What a request's truncation psi means. "z-scale": the server scales
            z by psi before the model. "w": the model takes psi as its ``truncation`` input and
            applies w' = w_avg + psi (w - w_avg) after its mapping network (StyleGAN).
        noise_dim: Length of the model's ``noise`` input (per-layer noise, flattened); the
            server draws it from the request's seed after z. 0: no noise input.
        style_layers: Style inputs of the synthesis network. When > 0 the model takes
            ``z_mix`` and ``mix_layer``: layers from ``mix_layer`` on use z_mix's style
            (style mixing); mix_layer == style_layers mixes nothing.
        value_range: Range of the raw generator output, always [-1, 1] today.
        onnx_opset: ONNX opset of model.onnx.
        source_checkpoint_sha256: SHA-256 of the checkpoint the model was exported from.
        training_metrics: Evaluation figures recorded at training time.
        tool_versions: Versions of the tools that produced the model.
        extra: Anything else the exporter recorded.
    """

    name: str
    version: str
    latent_dim: int
    num_classes: int
    class_names: tuple[str, ...] = ()
    height: int
    width: int
    channels: int
    latent_scheme: str
    architecture: str = "dcgan"
    truncation_mode: str = "z-scale"
    noise_dim: int = 0
    style_layers: int = 0
    value_range: tuple[float, float] = (-1.0, 1.0)
    onnx_opset: int = 0
    source_checkpoint_sha256: str = ""
    training_metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    tool_versions: dict[str, str] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.latent_scheme != LATENT_SCHEME:
            raise ValueError(
                f"latent_scheme {self.latent_scheme!r} is not supported: this server maps seeds "
                f"with {LATENT_SCHEME!r}, and serving another scheme would change every image"
            )
        if not self.version.isascii() or not self.version.isdigit():
            raise ValueError(f"version must be the version folder's number, got {self.version!r}")
        for field in ("latent_dim", "height", "width"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        if self.truncation_mode not in TRUNCATION_MODES:
            raise ValueError(
                f"truncation_mode must be one of {', '.join(TRUNCATION_MODES)}, "
                f"got {self.truncation_mode!r}"
            )
        for field in ("noise_dim", "style_layers"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} must be >= 0, got {getattr(self, field)}")
        for field, values in (("name", [self.name]), ("class_names", self.class_names)):
            for value in values:
                if not is_utf8(value):
                    raise ValueError(
                        f"{field} {value!r} is not valid UTF-8 text: gRPC could not send it"
                    )
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} entries but num_classes is "
                f"{self.num_classes}"
            )

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["format_version"] = FORMAT_VERSION
        out["class_names"] = list(self.class_names)
        out["value_range"] = list(self.value_range)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "metadata") -> ModelMetadata:
        """Build from parsed JSON; raise ModelLoadError naming the missing or bad field."""
        if not isinstance(data, dict):
            raise ModelLoadError(f"{source}: expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelLoadError(
                f"{source}: format_version {version!r} is not supported (expected {FORMAT_VERSION})"
            )
        fields = {f.name: f for f in dataclasses.fields(cls)}
        required = [
            n
            for n, f in fields.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [n for n in required if n not in data]
        if missing:
            raise ModelLoadError(f"{source}: missing required field(s) {', '.join(missing)}")
        kwargs = {k: v for k, v in data.items() if k in fields}
        try:
            _check_types(kwargs)
            kwargs["class_names"] = tuple(kwargs.get("class_names", ()))
            kwargs["value_range"] = tuple(kwargs.get("value_range", (-1.0, 1.0)))
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"{source}: {exc}") from exc

    @classmethod
    def read(cls, path: pathlib.Path) -> ModelMetadata:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelLoadError(f"{path}: metadata file is missing") from None
        except RecursionError:
            raise ModelLoadError(f"{path}: not readable JSON (nested too deeply)") from None
        except (OSError, ValueError) as exc:  # JSONDecodeError, UnicodeDecodeError, huge ints
            raise ModelLoadError(f"{path}: not readable JSON ({exc})") from exc
        return cls.from_dict(data, source=str(path))

    def write(self, path: pathlib.Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


# The JSON type of each scalar or object field (class_names and value_range are checked apart).
_FIELD_TYPES: dict[str, type] = {
    f.name: {"int": int, "str": str}.get(str(f.type), dict)
    for f in dataclasses.fields(ModelMetadata)
    if str(f.type) in ("int", "str") or str(f.type).startswith("dict")
}
