from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_ENCODING_PNG: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_RAW_UINT8: _ClassVar[ImageEncoding]
IMAGE_ENCODING_PNG: ImageEncoding
IMAGE_ENCODING_RAW_UINT8: ImageEncoding

class GenerateRequest(_message.Message):
    __slots__ = ("seed", "class_label", "model", "encoding", "truncation", "model_version", "style_mix_seed", "style_mix_layer")
    SEED_FIELD_NUMBER: _ClassVar[int]
    CLASS_LABEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STYLE_MIX_SEED_FIELD_NUMBER: _ClassVar[int]
    STYLE_MIX_LAYER_FIELD_NUMBER: _ClassVar[int]
    seed: int
    class_label: int
    model: str
    encoding: ImageEncoding
    truncation: float
    model_version: str
    style_mix_seed: int
    style_mix_layer: int
    def __init__(self, seed: _Optional[int] = ..., class_label: _Optional[int] = ..., model: _Optional[str] = ..., encoding: _Optional[_Union[ImageEncoding, str]] = ..., truncation: _Optional[float] = ..., model_version: _Optional[str] = ..., style_mix_seed: _Optional[int] = ..., style_mix_layer: _Optional[int] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("image", "encoding", "height", "width", "channels", "seed", "class_label", "model", "model_version")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CLASS_LABEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    encoding: ImageEncoding
    height: int
    width: int
    channels: int
    seed: int
    class_label: int
    model: str
    model_version: str
    def __init__(self, image: _Optional[bytes] = ..., encoding: _Optional[_Union[ImageEncoding, str]] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ..., seed: _Optional[int] = ..., class_label: _Optional[int] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("model", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "latent_dim", "num_classes", "height", "width", "channels", "class_names", "max_batch_size", "backend", "versions", "max_items_per_call", "truncation_mode", "architecture", "style_layers", "precision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEMS_PER_CALL_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_MODE_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    STYLE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    latent_dim: int
    num_classes: int
    height: int
    width: int
    channels: int
    class_names: _containers.RepeatedScalarFieldContainer[str]
    max_batch_size: int
    backend: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    max_items_per_call: int
    truncation_mode: str
    architecture: str
    style_layers: int
    precision: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., latent_dim: _Optional[int] = ..., num_classes: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ..., class_names: _Optional[_Iterable[str]] = ..., max_batch_size: _Optional[int] = ..., backend: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., max_items_per_call: _Optional[int] = ..., truncation_mode: _Optional[str] = ..., architecture: _Optional[str] = ..., style_layers: _Optional[int] = ..., precision: _Optional[str] = ...) -> None: ...

class BatchItem(_message.Message):
    __slots__ = ("seed", "class_label")
    SEED_FIELD_NUMBER: _ClassVar[int]
    CLASS_LABEL_FIELD_NUMBER: _ClassVar[int]
    seed: int
    class_label: int
    def __init__(self, seed: _Optional[int] = ..., class_label: _Optional[int] = ...) -> None: ...

class GenerateBatchRequest(_message.Message):
    __slots__ = ("items", "model", "model_version", "encoding", "truncation")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[BatchItem]
    model: str
    model_version: str
    encoding: ImageEncoding
    truncation: float
    def __init__(self, items: _Optional[_Iterable[_Union[BatchItem, _Mapping]]] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., encoding: _Optional[_Union[ImageEncoding, str]] = ..., truncation: _Optional[float] = ...) -> None: ...

class GenerateBatchResponse(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[GenerateResponse]
    def __init__(self, images: _Optional[_Iterable[_Union[GenerateResponse, _Mapping]]] = ...) -> None: ...

class InterpolateRequest(_message.Message):
    __slots__ = ("seed_start", "seed_end", "class_label", "frames", "model", "model_version", "encoding", "truncation")
    SEED_START_FIELD_NUMBER: _ClassVar[int]
    SEED_END_FIELD_NUMBER: _ClassVar[int]
    CLASS_LABEL_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    seed_start: int
    seed_end: int
    class_label: int
    frames: int
    model: str
    model_version: str
    encoding: ImageEncoding
    truncation: float
    def __init__(self, seed_start: _Optional[int] = ..., seed_end: _Optional[int] = ..., class_label: _Optional[int] = ..., frames: _Optional[int] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., encoding: _Optional[_Union[ImageEncoding, str]] = ..., truncation: _Optional[float] = ...) -> None: ...

class InterpolateFrame(_message.Message):
    __slots__ = ("index", "t", "image", "encoding", "height", "width", "channels", "model", "model_version")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    T_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    index: int
    t: float
    image: bytes
    encoding: ImageEncoding
    height: int
    width: int
    channels: int
    model: str
    model_version: str
    def __init__(self, index: _Optional[int] = ..., t: _Optional[float] = ..., image: _Optional[bytes] = ..., encoding: _Optional[_Union[ImageEncoding, str]] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...
