"""Server settings: the TOML file, `build_config`'s checks, and the precedence of
defaults < config file < GANSERVE_* environment variables < flags, seen through
`ganserve serve --dry-run`."""

from __future__ import annotations

import gc
import json
import math
import os
import pathlib
from typing import Any

import pytest
from click.testing import CliRunner, Result

from conftest import write_certificates
from ganserve.serve.backends import Backend
from ganserve.serve.cli import main, serve
from ganserve.serve.config import (
    FILE_ALIASES,
    FILE_KEYS,
    BatchingConfig,
    LogFormat,
    ModelConfig,
    ServerConfig,
    batch_request_bytes,
    build_config,
    largest_batch_request,
    read_config_file,
)
from ganserve.serve.metadata import MAX_DIM

TOKEN = "s3cret-token-0123456789"


@pytest.fixture(autouse=True)
def no_ganserve_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings from the calling shell must not leak into these tests."""
    for name in list(os.environ):
        if name.startswith("GANSERVE_"):
            monkeypatch.delenv(name)


def write_toml(tmp_path: pathlib.Path, text: str, name: str = "ganserve.toml") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def settings_from(tmp_path: pathlib.Path, text: str) -> ServerConfig:
    """The config a TOML file alone makes (as `ganserve serve --config` would)."""
    return build_config(
        {"model_repository": "models", **read_config_file(write_toml(tmp_path, text))}
    )


# --- read_config_file and build_config ----------------------------------------------------------


def test_file_settings_reach_every_config_dataclass(tmp_path: pathlib.Path) -> None:
    config = settings_from(
        tmp_path,
        """
        port = 7000
        metrics_port = -1
        backend = "onnxruntime-cpu"
        log_format = "json"
        max_batch_size = 32
        preferred_batch_sizes = [8, 32]
        cache_bytes = 67108864

        [models.digits]
        backend = "onnxruntime-cpu"
        versions = [1, 2]
        """,
    )
    assert (config.port, config.metrics_port, config.cache_bytes) == (7000, -1, 64 * 1024 * 1024)
    assert config.backend is Backend.ONNXRUNTIME_CPU and config.log_format is LogFormat.JSON
    assert config.batching == BatchingConfig(max_batch_size=32, preferred_batch_sizes=(8, 32))
    assert config.models == {
        "digits": ModelConfig(backend=Backend.ONNXRUNTIME_CPU, versions=(1, 2))
    }
    assert config.model("other") == ModelConfig(backend=Backend.ONNXRUNTIME_CPU)


def test_a_model_table_without_a_backend_takes_the_server_wide_one(tmp_path: pathlib.Path) -> None:
    """A table that only pinned versions reset its model to auto, ignoring --backend (which
    then served on the CPU a model meant for the GPU, in silence)."""
    text = '[models.digits]\nversions = [1, 2]\n[models.other]\nbackend = "tensorrt"\n'
    path = write_toml(tmp_path, text)
    config = build_config(
        {"model_repository": "models", "backend": "onnxruntime-cuda", **read_config_file(path)}
    )
    assert config.model("digits") == ModelConfig(backend=Backend.ONNXRUNTIME_CUDA, versions=(1, 2))
    assert config.model("other").backend is Backend.TENSORRT  # its own backend wins
    assert settings_from(tmp_path, text).model("digits").backend is Backend.AUTO


def test_unknown_top_level_key_names_the_key_and_the_file(tmp_path: pathlib.Path) -> None:
    path = write_toml(tmp_path, "port = 7000\nmax_batch = 8\n", name="typo.toml")
    with pytest.raises(ValueError, match=r"typo\.toml.*unknown key\(s\) max_batch"):
        read_config_file(path)


def test_table_for_a_flat_setting_is_an_unknown_key(tmp_path: pathlib.Path) -> None:
    path = write_toml(tmp_path, "[batching]\nmax_batch_size = 8\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) batching"):
        read_config_file(path)


@pytest.mark.parametrize(
    "text",
    [
        "port = [\n",
        "port = " + "[" * 100_000 + "]" * 100_000 + "\n",  # nested past Python's recursion limit
        "port = " + "9" * 5000 + "\n",  # past Python's int-from-string digit limit
    ],
    ids=["unclosed", "deep", "huge-int"],
)
def test_invalid_toml_is_reported_as_such(tmp_path: pathlib.Path, text: str) -> None:
    path = write_toml(tmp_path, text)
    with pytest.raises(ValueError, match=r"ganserve\.toml is not valid TOML"):
        read_config_file(path)


def test_missing_config_file_is_reported(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match=r"nowhere\.toml does not exist"):
        read_config_file(tmp_path / "nowhere.toml")


def test_unknown_model_backend_lists_the_valid_backends(tmp_path: pathlib.Path) -> None:
    choices = ", ".join(b.value for b in Backend)
    with pytest.raises(ValueError, match=rf"models\.x\.backend 'gpu' is not one of {choices}$"):
        settings_from(tmp_path, '[models.x]\nbackend = "gpu"\n')


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ("versions = [0]", r"models\.x: versions must be positive integers, got \[0\]"),
        ("versions = [-3, 1]", r"models\.x: versions must be positive integers"),
        ('versions = ["1"]', r"models\.x\.versions must be a list of integers"),
        ("versions = 1", r"models\.x\.versions must be a list of integers"),
        ("versions = [true]", r"models\.x\.versions must be a list of integers"),
        ("max_batch_size = 8", r"models\.x: unknown key\(s\) max_batch_size"),
    ],
)
def test_bad_model_table_names_the_model_and_the_field(
    tmp_path: pathlib.Path, table: str, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        settings_from(tmp_path, f"[models.x]\n{table}\n")


def test_models_must_be_tables(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match=r"models must be a table of \[models\.<name>\] tables"):
        settings_from(tmp_path, "models = 3\n")


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"max_batch_size": 0}, r"max_batch_size must be in 1\.\.4096, got 0"),
        ({"max_batch_size": 4097}, r"max_batch_size must be in 1\.\.4096, got 4097"),
        ({"max_queue_size": 0}, r"max_queue_size must be in"),
        ({"instances": 65}, r"instances must be in 1\.\.64"),
        ({"max_queue_delay_us": -1}, r"max_queue_delay_us must be in"),
        ({"parallel_batch_us": -1}, r"parallel_batch_us must be in 0\.\.10000000"),
        (
            {"preferred_batch_sizes": [128]},
            r"preferred_batch_sizes holds 128; each must be in 1\.\.max_batch_size \(64\)",
        ),
        (
            {"preferred_batch_sizes": [8, 64], "max_batch_size": 32},
            r"preferred_batch_sizes holds 64; .*\(32\)",
        ),
        ({"port": 8000, "metrics_port": 8000}, r"port and metrics_port are both 8000"),
        ({"port": 65536}, r"port must be in 0\.\.65535"),
        ({"metrics_port": -2}, r"metrics_port must be in -1\.\.65535"),
        ({"max_request_bytes": 1023}, r"max_request_bytes must be in 1024\.\."),
        ({"concurrent_accepts": -1}, r"concurrent_accepts must be in 0\.\.1024"),
        ({"event_loop": "trio"}, r"event_loop 'trio' is not one of auto, uvloop, asyncio"),
        ({"concurrent_accepts": 1025}, r"concurrent_accepts must be in 0\.\.1024"),
        ({"max_items_per_call": 0}, r"max_items_per_call must be in 1\.\.65536"),
        ({"drain_grace_s": -1.0}, r"drain_grace must be in 0..3600 seconds"),
        ({"shutdown_delay_s": -0.5}, r"shutdown_delay must be in 0..3600 seconds"),
        ({"backend": "gpu"}, r"backend 'gpu' is not one of auto, onnxruntime-cpu"),
        ({"log_format": "xml"}, r"log_format 'xml' is not one of text, json"),
        ({"log_level": "loud"}, r"log_level 'loud' is not one of DEBUG, INFO, WARNING, ERROR"),
        ({"tls_cert": "server.pem"}, r"TLS needs both tls_cert and tls_key"),
        ({"tls_key": "server.key"}, r"TLS needs both tls_cert and tls_key"),
        ({"auth_token": "fifteen-chars.."}, r"auth_token must be at least 16 characters"),
        ({"no_such_setting": 1}, r"unknown setting\(s\) no_such_setting"),
    ],
)
def test_invalid_settings_are_refused_naming_the_setting(
    settings: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        build_config({"model_repository": "models", **settings})


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        (
            {"max_request_bytes": 1024},
            r"max_request_bytes 1024 cannot hold a GenerateBatch of max_items_per_call \(1024\) "
            r"items: .*raise max_request_bytes to at least 17931, or lower max_items_per_call "
            r"to at most 29$",
        ),
        (
            {"max_request_bytes": 8192, "max_items_per_call": 1024, "max_queue_size": 500},
            r"of max_queue_size \(500\) items, the cap on max_items_per_call: .* at least 9023,",
        ),
        (  # the largest cap the flag allows needs more than the default 1 MiB
            {"max_items_per_call": 65536, "max_queue_size": 65536},
            r"max_request_bytes 1048576 cannot hold .* at most 61650$",
        ),
    ],
)
def test_max_request_bytes_too_small_for_a_full_call_is_refused_naming_both(
    settings: dict[str, Any], match: str
) -> None:
    """gRPC refused such calls before any handler ran ("Received message larger than max
    (1270 vs. 1024)"), naming neither setting, while GetModelInfo advertised the cap."""
    with pytest.raises(ValueError, match=match):
        build_config({"model_repository": "models", **settings})


@pytest.mark.parametrize("items", [1, 29, 1024, 4096])
def test_the_smallest_max_request_bytes_for_a_cap_is_accepted(items: int) -> None:
    needed = max(batch_request_bytes(items), 1024)
    settings = {"model_repository": "m", "max_items_per_call": items}
    assert build_config({**settings, "max_request_bytes": needed}).max_request_bytes == needed
    if needed > 1024:
        with pytest.raises(ValueError, match=f"at least {needed},"):
            build_config({**settings, "max_request_bytes": needed - 1})


def test_the_largest_batch_request_sets_every_field_the_server_reads() -> None:
    """The size check counts each field at its largest: a field added to the messages must be
    set here too, or requests that use it could pass the limit the config promised."""
    request = largest_batch_request(1)
    assert {f.name for f, _ in request.ListFields()} == set(request.DESCRIPTOR.fields_by_name)
    (item,) = request.items
    assert {f.name for f, _ in item.ListFields()} == set(item.DESCRIPTOR.fields_by_name)
    assert item.seed == 2**64 - 1 and item.class_label == MAX_DIM - 1
    for items in (0, 1, 1000, 65536):  # the per-item size does not grow with the count
        assert largest_batch_request(items).ByteSize() == batch_request_bytes(items)


def test_the_default_limits_hold_a_full_call() -> None:
    defaults = ServerConfig(model_repository=pathlib.Path("m"))
    assert batch_request_bytes(defaults.max_items_per_call) <= defaults.max_request_bytes


@pytest.mark.parametrize("key", ["shutdown_delay_s", "drain_grace_s", "engine_timeout_s"])
@pytest.mark.parametrize("value", [math.inf, math.nan, -math.inf])
def test_durations_must_be_finite(key: str, value: float) -> None:
    """An infinite shutdown delay would make SIGTERM wait forever; NaN compares false with
    every bound and would pass them all."""
    with pytest.raises(ValueError, match=f"{key.removesuffix('_s')} must be a finite number"):
        build_config({"model_repository": "m", key: value})


@pytest.mark.parametrize("key", ["shutdown_delay", "drain_grace"])
def test_durations_are_bounded(key: str) -> None:
    """1e300 s is finite, but SIGTERM would wait it out (the chart's schema has the same bound)."""
    with pytest.raises(ValueError, match=f"{key} must be in 0..3600 seconds, got 1e"):
        build_config({"model_repository": "m", f"{key}_s": 1e300})
    assert getattr(build_config({"model_repository": "m", f"{key}_s": 3600}), f"{key}_s") == 3600


@pytest.mark.parametrize("key", ["host", "metrics_host"])
def test_an_empty_host_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match=f"{key} must be an address or host name"):
        build_config({"model_repository": "m", key: ""})


@pytest.mark.parametrize("key", ["host", "metrics_host"])
@pytest.mark.parametrize("value", ["\udcff", "h\u00f6st", "a\nb"])
def test_a_host_gRPC_or_the_metrics_server_cannot_encode_is_refused(key: str, value: str) -> None:
    """These once reached a UnicodeEncodeError (or an IDNA error) traceback at bind."""
    with pytest.raises(ValueError, match=f"{key} .* must be an address or an ASCII host name"):
        build_config({"model_repository": "m", key: value})


def test_both_ports_zero_is_allowed() -> None:
    """Port 0 means "any free port" for both, so the two cannot collide."""
    config = build_config({"model_repository": "models", "port": 0, "metrics_port": 0})
    assert (config.port, config.metrics_port) == (0, 0)


def test_tls_files_must_exist(tmp_path: pathlib.Path) -> None:
    cert = tmp_path / "server.pem"
    cert.write_text("not checked here")
    with pytest.raises(ValueError, match=r"tls_key .*server\.key does not exist"):
        build_config(
            {"model_repository": "m", "tls_cert": cert, "tls_key": tmp_path / "server.key"}
        )
    with pytest.raises(ValueError, match=r"tls_cert .* is a directory, not a file"):
        build_config({"model_repository": "m", "tls_cert": tmp_path, "tls_key": cert})


def test_a_tls_file_that_cannot_be_read_is_named_not_a_traceback(tmp_path: pathlib.Path) -> None:
    """load_cert_chain's plain OSError (a root-owned key the server's user cannot read; here a
    file whose read fails) was a traceback at start-up."""
    write_certificates(tmp_path)
    unreadable = pathlib.Path("/proc/self/mem")  # a regular file; reading offset 0 fails (EIO)
    settings = {"model_repository": "m", "tls_cert": tmp_path / "tls.crt", "tls_key": unreadable}
    with pytest.raises(ValueError, match=r"tls_key /proc/self/mem cannot be read: "):
        build_config(settings)


def test_tls_settings_become_a_tls_config(tmp_path: pathlib.Path) -> None:
    write_certificates(tmp_path)
    paths = {
        "tls_cert": tmp_path / "tls.crt",
        "tls_key": tmp_path / "tls.key",
        "tls_client_ca": tmp_path / "ca.crt",
    }
    config = build_config({"model_repository": "m", **{k: str(v) for k, v in paths.items()}})
    assert config.tls is not None
    assert (config.tls.cert_file, config.tls.key_file, config.tls.client_ca_file) == (
        paths["tls_cert"],
        paths["tls_key"],
        paths["tls_client_ca"],
    )


def test_tls_files_that_are_not_a_certificate_and_its_key_are_named(
    tmp_path: pathlib.Path,
) -> None:
    """gRPC alone would only say it cannot listen on the port."""
    write_certificates(tmp_path / "a")
    write_certificates(tmp_path / "b")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a pem\n")
    a, b = tmp_path / "a", tmp_path / "b"
    cases = [
        ((junk, junk, None), "tls_cert .*junk.pem and tls_key .*junk.pem are not a PEM"),
        ((a / "tls.crt", b / "tls.key", None), "tls_cert .*a/tls.crt and tls_key .*b/tls.key"),
        ((a / "tls.crt", a / "tls.key", junk), "tls_client_ca .*junk.pem holds no PEM CA"),
    ]
    for (cert, key, ca), match in cases:
        settings = {"model_repository": "m", "tls_cert": cert, "tls_key": key, "tls_client_ca": ca}
        with pytest.raises(ValueError, match=match):
            build_config(settings)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"\xff\xfe\x00abc", "is not UTF-8 text"),
        ("t\u00f6ken".encode() * 5, "auth_token must be printable ASCII"),
        (b"abcdefgh\nijklmnopq", "auth_token must be printable ASCII"),
        (b"x" * 5000, "is over 4096 bytes"),
    ],
)
def test_a_token_no_client_could_send_is_refused(
    tmp_path: pathlib.Path, content: bytes, match: str
) -> None:
    token = tmp_path / "token"
    token.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        build_config({"model_repository": "m", "auth_token_file": str(token)})


def test_auth_token_file_is_read_and_stripped(tmp_path: pathlib.Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n\n")
    config = build_config({"model_repository": "m", "auth_token_file": str(token_file)})
    assert config.auth_token == TOKEN


def test_short_token_in_a_token_file_is_refused(tmp_path: pathlib.Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("short\n")
    with pytest.raises(ValueError, match="auth_token must be at least 16 characters"):
        build_config({"model_repository": "m", "auth_token_file": token_file})


def test_missing_auth_token_file_is_named(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match=r"auth_token_file .*absent: No such file"):
        build_config({"model_repository": "m", "auth_token_file": tmp_path / "absent"})


def test_token_and_token_file_together_are_refused(tmp_path: pathlib.Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    with pytest.raises(ValueError, match="set auth_token or auth_token_file, not both"):
        build_config({"model_repository": "m", "auth_token": TOKEN, "auth_token_file": token_file})


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('port = "7000"', r"port must be an integer, got '7000'"),
        ("port = 7000.5", r"port must be an integer, got 7000\.5"),
        ("port = true", r"port must be an integer, got True"),
        ("max_queue_delay_us = 1.5", r"max_queue_delay_us must be an integer"),
        ('warmup = "no"', r"warmup must be true or false, got 'no'"),
        ("access_log = 1", r"access_log must be true or false"),
        ('drain_grace = "soon"', r"drain_grace must be a number"),
        ("engine_timeout = true", r"engine_timeout must be a number"),
        ("preferred_batch_sizes = 8", r"preferred_batch_sizes must be a list of integers, got 8"),
        ("preferred_batch_sizes = [true]", r"preferred_batch_sizes must be a list of integers"),
        ("host = 5", r"host must be a string, got 5"),
    ],
)
def test_wrong_typed_file_value_is_refused_naming_the_key(
    tmp_path: pathlib.Path, text: str, match: str
) -> None:
    with pytest.raises(ValueError, match=rf"ganserve\.toml: {match}"):
        settings_from(tmp_path, f"{text}\n")


def test_wrong_typed_setting_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"max_batch_size must be an integer, got '8'"):
        build_config({"model_repository": "m", "max_batch_size": "8"})


@pytest.mark.parametrize(
    ("key", "field"),
    [
        ("shutdown_delay", "shutdown_delay_s"),
        ("drain_grace", "drain_grace_s"),
        ("engine_timeout", "engine_timeout_s"),
    ],
)
def test_file_keys_are_the_flag_names_with_underscores(
    tmp_path: pathlib.Path, key: str, field: str
) -> None:
    """The flags are --shutdown-delay, --drain-grace and --engine-timeout; so is the file."""
    config = settings_from(tmp_path, f"{key} = 3\n")
    assert getattr(config.batching if field == "engine_timeout_s" else config, field) == 3.0
    path = write_toml(tmp_path, f"{field} = 3\n", name="field-name.toml")
    with pytest.raises(ValueError, match=rf"unknown key\(s\) {field}"):
        read_config_file(path)


# --- `ganserve serve --dry-run`: precedence and errors ------------------------------------------


def dry_run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["serve", "--dry-run", *args], env=env)


def resolved(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = dry_run(*args, env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_dry_run_prints_the_defaults_as_json() -> None:
    out = resolved()
    defaults = ServerConfig(model_repository=pathlib.Path("models"))
    assert out["port"] == defaults.port and out["metrics_port"] == defaults.metrics_port
    assert out["batching"] == {
        "max_batch_size": 64,
        "max_queue_delay_us": 0,
        "max_queue_size": 4096,
        "instances": 1,
        "preferred_batch_sizes": [],
        "engine_timeout_s": 30.0,
        "parallel_batch_us": 2000,
    }
    assert out["models"] == {} and out["tls"] is None and out["auth_token"] is None
    assert out["admin"] is False  # ModelAdmin (reload) is off unless asked for
    assert (out["backend"], out["log_format"], out["model_repository"]) == (
        "auto",
        "text",
        "models",
    )


def test_file_then_environment_then_flags_win(tmp_path: pathlib.Path) -> None:
    config = write_toml(
        tmp_path,
        "port = 7000\nmax_queue_size = 5\nmax_batch_size = 16\n[models.digits]\nversions = [2]\n",
    )
    out = resolved("--config", str(config), "--max-queue-size", "9", env={"GANSERVE_PORT": "7001"})
    assert out["port"] == 7001  # env over file
    assert out["batching"]["max_queue_size"] == 9  # flag over file
    assert out["batching"]["max_batch_size"] == 16  # file over default
    assert out["models"] == {"digits": {"backend": "auto", "precision": "fp32", "versions": [2]}}
    assert out["metrics_port"] == 8000  # default


@pytest.mark.parametrize(
    ("file_value", "env_value", "flag", "expected"),
    [
        (None, None, None, 4096),
        ("5", None, None, 5),
        ("5", "7", None, 7),
        ("5", "7", "9", 9),
        (None, "7", "9", 9),
        (None, "7", None, 7),
    ],
)
def test_each_source_overrides_the_ones_before_it(
    tmp_path: pathlib.Path,
    file_value: str | None,
    env_value: str | None,
    flag: str | None,
    expected: int,
) -> None:
    args = []
    if file_value is not None:
        args += ["--config", str(write_toml(tmp_path, f"max_queue_size = {file_value}\n"))]
    if flag is not None:
        args += ["--max-queue-size", flag]
    env = {"GANSERVE_MAX_QUEUE_SIZE": env_value} if env_value is not None else None
    assert resolved(*args, env=env)["batching"]["max_queue_size"] == expected


def test_environment_overrides_file_for_switches_and_lists(tmp_path: pathlib.Path) -> None:
    config = write_toml(tmp_path, "warmup = true\npreferred_batch_sizes = [4]\n")
    env = {"GANSERVE_WARMUP": "false", "GANSERVE_PREFERRED_BATCH_SIZES": "8,16"}
    out = resolved("--config", str(config), env=env)
    assert out["warmup"] is False
    assert out["batching"]["preferred_batch_sizes"] == [8, 16]
    out = resolved("--config", str(config), "--preferred-batch-sizes", "2", env=env)
    assert out["batching"]["preferred_batch_sizes"] == [2]


def test_renamed_settings_follow_the_same_precedence(tmp_path: pathlib.Path) -> None:
    """--drain-grace is drain_grace in the file and GANSERVE_DRAIN_GRACE in the environment."""
    config = str(write_toml(tmp_path, "drain_grace = 3\nshutdown_delay = 1\n"))
    assert resolved("--config", config)["drain_grace_s"] == 3.0
    env = {"GANSERVE_DRAIN_GRACE": "4"}
    out = resolved("--config", config, env=env)
    assert (out["drain_grace_s"], out["shutdown_delay_s"]) == (4.0, 1.0)
    assert resolved("--config", config, "--drain-grace", "5", env=env)["drain_grace_s"] == 5.0


def test_every_setting_flag_is_a_config_file_key() -> None:
    """The --help text says the file's keys are the flag names with underscores: each flag
    but --config and --dry-run (the bearer token has no flag), under its flag's own name."""
    renamed = {field: alias for alias, field in FILE_ALIASES.items()}
    flags = {renamed.get(p.name, p.name) for p in serve.params if p.name != "dry_run"}
    assert flags - {"config_file"} <= FILE_KEYS, sorted(flags - {"config_file"} - FILE_KEYS)


def test_log_level_comes_from_the_file_in_any_case_and_follows_the_precedence(
    tmp_path: pathlib.Path,
) -> None:
    config = str(write_toml(tmp_path, 'log_level = "debug"\n'))
    assert resolved()["log_level"] == "INFO"
    assert resolved("--config", config)["log_level"] == "DEBUG"
    env = {"GANSERVE_LOG_LEVEL": "warning"}
    assert resolved("--config", config, env=env)["log_level"] == "WARNING"
    assert resolved("--config", config, "--log-level", "ERROR", env=env)["log_level"] == "ERROR"


def test_config_file_can_come_from_the_environment(tmp_path: pathlib.Path) -> None:
    config = write_toml(tmp_path, "cache_bytes = 1024\n")
    assert resolved(env={"GANSERVE_CONFIG": str(config)})["cache_bytes"] == 1024


def test_auth_token_from_the_environment_is_redacted() -> None:
    result = dry_run(env={"GANSERVE_AUTH_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["auth_token"] == "<redacted>"
    assert TOKEN not in result.output


def test_auth_token_from_a_token_file_is_redacted(tmp_path: pathlib.Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    result = dry_run("--auth-token-file", str(token_file))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["auth_token"] == "<redacted>"
    assert TOKEN not in result.output


def test_there_is_no_auth_token_flag() -> None:
    """Secrets on a command line show up in `ps`; the token comes from a file or the env."""
    result = dry_run("--auth-token", TOKEN)
    assert result.exit_code == 2
    assert "No such option '--auth-token'" in result.output


def assert_one_line_error(result: Result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--port", "70000"], ["'--port'", "70000 is not in the range 0<=x<=65535"]),
        (["--port", "abc"], ["'--port'", "'abc'"]),
        (["--max-batch-size", "0"], ["'--max-batch-size'", "0 is not in the range"]),
        (["--instances", "65"], ["'--instances'"]),
        (["--metrics-port", "-2"], ["'--metrics-port'"]),
        (["--max-request-bytes", "10"], ["'--max-request-bytes'"]),
        (["--drain-grace", "-1"], ["'--drain-grace'"]),
        (["--backend", "gpu"], ["'--backend'", "'gpu' is not one of"]),
        (["--log-format", "xml"], ["'--log-format'"]),
        (["--preferred-batch-sizes", "8,x"], ["'--preferred-batch-sizes'", "'8,x'"]),
    ],
)
def test_bad_flag_value_is_one_line_naming_the_option(
    args: list[str], fragments: list[str]
) -> None:
    assert_one_line_error(dry_run(*args), *fragments)


def test_bad_environment_value_names_the_variable() -> None:
    result = dry_run(env={"GANSERVE_MAX_BATCH_SIZE": "lots"})
    assert_one_line_error(result, "'--max-batch-size'", "GANSERVE_MAX_BATCH_SIZE", "'lots'")


@pytest.mark.parametrize(
    ("args", "env", "fragments"),
    [
        (["--port", "8000", "--metrics-port", "8000"], {}, ["port and metrics_port"]),
        (["--preferred-batch-sizes", "128"], {}, ["preferred_batch_sizes holds 128"]),
        (["--tls-cert", "server.pem"], {}, ["TLS needs both tls_cert and tls_key"]),
        ([], {"GANSERVE_AUTH_TOKEN": "short"}, ["auth_token must be at least 16"]),
    ],
)
def test_invalid_combination_is_one_line_naming_the_setting(
    args: list[str], env: dict[str, str], fragments: list[str]
) -> None:
    assert_one_line_error(dry_run(*args, env=env), *fragments)


def test_bad_config_file_is_one_line_naming_key_and_file(tmp_path: pathlib.Path) -> None:
    config = write_toml(tmp_path, "max_batch = 8\n", name="typo.toml")
    assert_one_line_error(dry_run("--config", str(config)), "typo.toml", "max_batch")


def test_invalid_toml_from_the_cli_is_one_line(tmp_path: pathlib.Path) -> None:
    config = write_toml(tmp_path, "port = \n")
    assert_one_line_error(dry_run("--config", str(config)), "is not valid TOML")


def test_auth_token_variable_beats_a_token_file_named_in_the_config_file(
    tmp_path: pathlib.Path,
) -> None:
    config = tmp_path / "ganserve.toml"
    config.write_text(f'auth_token_file = "{tmp_path / "absent-token"}"\n')
    out = resolved("--config", str(config), env={"GANSERVE_AUTH_TOKEN": TOKEN})
    assert out["auth_token"] == "<redacted>"


def test_model_precision_must_be_fp32_or_fp16(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ganserve.toml"
    path.write_text('[models.digits]\nprecision = "int8"\n')
    with pytest.raises(ValueError, match=r"models\.digits: precision must be fp32 or fp16"):
        build_config({"model_repository": "m", **read_config_file(path)})


def test_serve_collects_young_garbage_less_often(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server raises the collector's young-generation threshold before it starts."""
    from ganserve.serve import cli

    seen = []

    async def fake_serve(config) -> None:  # in place of starting the server
        seen.append(gc.get_threshold())

    before = gc.get_threshold()
    monkeypatch.setattr(cli, "_serve", fake_serve)
    try:
        result = CliRunner().invoke(main, ["serve", "--model-repository", "models"])
    finally:
        gc.set_threshold(*before)
    assert result.exit_code == 0, result.output
    assert seen == [(cli.GC_THRESHOLD, 50, 100)]
