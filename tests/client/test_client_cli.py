"""`gan-client` end to end against a real server on the bundled digits model (conditional,
10 classes, 32x32x1), and the Python client's retry policy."""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator

import grpc
import pytest
from click.testing import CliRunner, Result
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from conftest import BUNDLED_REPOSITORY, ServerThread, scrape, write_certificates
from ganserve.client.cli import main
from ganserve.client.client import GeneratorClient, ImageEncoding, RetryPolicy
from ganserve.serve.config import TlsConfig
from ganserve.v1 import generator_pb2, generator_pb2_grpc

TOKEN = "s3cret-token-0123456789"
BIN = pathlib.Path(sys.executable).parent
SIZE = 32  # the bundled model's images are 32x32, one channel


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    """GANSERVE_TARGET / GANSERVE_TOKEN from the calling shell must not leak into these tests,
    and relative output paths land in the test's own folder."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("GANSERVE_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def server(start_server_module: Callable[..., ServerThread]) -> ServerThread:
    return start_server_module()


@pytest.fixture(scope="module")
def auth_server(start_server_module: Callable[..., ServerThread]) -> ServerThread:
    return start_server_module(auth_token=TOKEN)


def gan_client(target: str, *args: str, env: dict[str, str] | None = None) -> Result:
    """Run `gan-client --target TARGET ARGS...` in-process."""
    return CliRunner().invoke(main, ["--target", target, "--timeout", "10", *args], env=env)


def succeeded(result: Result) -> str:
    assert result.exit_code == 0, result.output
    assert result.exception is None
    return result.output


def failed_cleanly(result: Result, exit_code: int) -> str:
    """The command failed with ``exit_code`` and one 'Error: ...' line, no traceback."""
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


# --- the commands -------------------------------------------------------------------------------


def test_generate_writes_a_png_of_the_model_shape(
    server: ServerThread, tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "seven.png"
    output = succeeded(
        gan_client(server.target, "generate", "--seed", "46", "--class", "7", "-o", str(out))
    )
    with Image.open(out) as image:
        assert (image.format, image.size, image.mode) == ("PNG", (SIZE, SIZE), "L")
    assert f"{out}: 32x32x1 from digits v2 (seed 46, class 7)" in output


def test_generate_raw_writes_the_same_image_as_png(
    server: ServerThread, tmp_path: pathlib.Path
) -> None:
    png, raw = tmp_path / "png.png", tmp_path / "raw.png"
    succeeded(gan_client(server.target, "generate", "--seed", "46", "--class", "7", "-o", str(png)))
    succeeded(
        gan_client(
            server.target, "generate", "--seed", "46", "--class", "7", "--raw", "-o", str(raw)
        )
    )
    with Image.open(png) as a, Image.open(raw) as b:
        assert (b.format, b.size) == ("PNG", (SIZE, SIZE))
        assert a.tobytes() == b.tobytes()


def test_generate_writes_other_formats_by_suffix(
    server: ServerThread, tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "seven.bmp"
    succeeded(gan_client(server.target, "generate", "--seed", "46", "--class", "7", "-o", str(out)))
    with Image.open(out) as image:
        assert (image.format, image.size) == ("BMP", (SIZE, SIZE))


def test_generate_with_truncation_zero_is_the_same_for_every_seed(
    server: ServerThread, tmp_path: pathlib.Path
) -> None:
    """psi = 0 scales every latent to zero, so the seed no longer matters."""
    pixels = []
    for seed in ("1", "2"):
        out = tmp_path / f"{seed}.png"
        args = ["generate", "--seed", seed, "--class", "4", "--truncation", "0", "-o", str(out)]
        succeeded(gan_client(server.target, *args))
        with Image.open(out) as image:
            pixels.append(image.tobytes())
    assert pixels[0] == pixels[1]


@pytest.mark.parametrize(
    ("seeds", "columns", "count", "size"),
    [
        ("0-9", "5", 10, (5 * SIZE, 2 * SIZE)),
        ("0-9", "10", 10, (10 * SIZE, SIZE)),
        ("1,5,9", "2", 3, (2 * SIZE, 2 * SIZE)),  # the last row is padded
        ("0-3,10", "5", 5, (5 * SIZE, SIZE)),
        ("0-2", "1000000000", 3, (3 * SIZE, SIZE)),  # no wider than the images
    ],
)
def test_batch_writes_a_grid(
    server: ServerThread,
    tmp_path: pathlib.Path,
    seeds: str,
    columns: str,
    count: int,
    size: tuple[int, int],
) -> None:
    out = tmp_path / "grid.png"
    output = succeeded(
        gan_client(
            server.target,
            *("batch", "--seeds", seeds, "--class", "3", "--columns", columns, "-o", str(out)),
        )
    )
    with Image.open(out) as image:
        assert image.size == size
    assert f"{count} images from digits v2" in output


def test_batch_grid_tiles_are_the_single_images(
    server: ServerThread, tmp_path: pathlib.Path
) -> None:
    """Tile (row 1, column 2) of a 5-column grid of seeds 0-9 is seed 7's image."""
    grid, single = tmp_path / "grid.png", tmp_path / "seven.png"
    succeeded(
        gan_client(
            server.target,
            *("batch", "--seeds", "0-9", "--class", "3", "--columns", "5", "-o", str(grid)),
        )
    )
    succeeded(
        gan_client(server.target, "generate", "--seed", "7", "--class", "3", "-o", str(single))
    )
    with Image.open(grid) as g, Image.open(single) as s:
        tile = g.crop((2 * SIZE, SIZE, 3 * SIZE, 2 * SIZE))
        assert tile.tobytes() == s.tobytes()


def test_interpolate_writes_an_animated_gif(server: ServerThread, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "walk.gif"
    args = ["interpolate", "--from", "1", "--to", "2", "--class", "5", "--frames", "6"]
    output = succeeded(gan_client(server.target, *args, "-o", str(out)))
    with Image.open(out) as image:
        assert (image.format, image.size, image.n_frames) == ("GIF", (SIZE, SIZE), 6)
        assert image.is_animated
    assert "6 frames from seed 1 to 2" in output


def test_interpolate_to_png_writes_a_strip(server: ServerThread, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "walk.png"
    args = ["interpolate", "--from", "1", "--to", "2", "--class", "5", "--frames", "4"]
    succeeded(gan_client(server.target, *args, "-o", str(out)))
    with Image.open(out) as image:
        assert image.size == (4 * SIZE, SIZE)


def test_info_prints_model_info_as_json(server: ServerThread) -> None:
    info = json.loads(succeeded(gan_client(server.target, "info")))
    assert info["name"] == "digits" and info["version"] == "2"
    assert (info["num_classes"], info["height"], info["width"], info["channels"]) == (10, 32, 32, 1)
    assert info["versions"] == ["2"] and info["truncation_mode"] == "z-scale"
    assert info["precision"] == "fp32"
    pinned = json.loads(succeeded(gan_client(server.target, "info", "--model-version", "2")))
    assert pinned == info
    unserved = failed_cleanly(gan_client(server.target, "info", "--model-version", "7"), 1)
    assert "NOT_FOUND: " in unserved and "version '7'" in unserved


def test_models_lists_the_ready_model(server: ServerThread) -> None:
    (line,) = succeeded(gan_client(server.target, "models")).splitlines()
    assert line.split() == ["digits", "v2", "READY", "onnxruntime-cpu", "fp32"]


def test_reload_without_changes_says_so(server: ServerThread) -> None:
    assert succeeded(gan_client(server.target, "reload")) == "no changes\n"


def test_a_reload_that_failed_as_a_whole_names_the_repository(
    start_server_module: Callable[..., ServerThread], tmp_path: pathlib.Path
) -> None:
    repository = tmp_path / "models"
    shutil.copytree(BUNDLED_REPOSITORY, repository)
    server = start_server_module(repository)
    repository.rename(tmp_path / "moved")
    result = gan_client(server.target, "reload")
    assert result.exit_code == 1
    (line,) = result.stdout.splitlines()
    assert line.split()[:2] == ["(repository)", "FAILED"] and str(repository) in line
    assert result.stderr == "Error: the reload failed; the versions served before still serve\n"


# --- errors -------------------------------------------------------------------------------------


def test_class_out_of_range_is_one_line_with_the_status(
    server: ServerThread, tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "x.png"
    result = gan_client(server.target, "generate", "--seed", "1", "--class", "12", "-o", str(out))
    error = failed_cleanly(result, 1)
    assert re.fullmatch(
        r"Error: INVALID_ARGUMENT: class_label 12 is out of range: model 'digits' has classes "
        r"0\.\.9 \(request id [0-9a-f]{16}\)",
        error,
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["batch", "--seeds", "0-9"], "INVALID_ARGUMENT: items[0].class_label is required"),
        (
            ["batch", "--seeds", "0-2", "--class", "12"],
            "INVALID_ARGUMENT: items[0].class_label 12 is out of range",
        ),
        (["generate", "--seed", "1", "--model", "nope"], "NOT_FOUND: "),
        (
            ["interpolate", "--from", "1", "--to", "2", "--class", "1", "--frames", "2000"],
            "INVALID_ARGUMENT: frames 2000 is out of range",
        ),
    ],
)
def test_server_errors_are_one_line_with_the_status(
    server: ServerThread, tmp_path: pathlib.Path, args: list[str], message: str
) -> None:
    result = gan_client(server.target, *args, "-o", str(tmp_path / "x.png"))
    assert message in failed_cleanly(result, 1)


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        ("x-y", "'x-y' is not a seed or a range like 0-9"),
        ("1,,2", "'' is not a seed or a range like 0-9"),
        ("-3", "'-3' is not a seed or a range like 0-9"),
        ("1-2-3", "'1-2-3' is not a seed or a range like 0-9"),
        ("", "'' is not a seed or a range like 0-9"),
        ("9-0", "range 9-0 runs backwards; write 0-9"),
        ("9-0,5", "range 9-0 runs backwards"),  # not dropped in silence beside a good part
        (str(2**64), f"seed {2**64} is over the largest seed"),
        ("0-18446744073709551615", "that is 18446744073709551616 seeds; one call carries at"),
        ("0-9999999999", "that is 10000000000 seeds; one call carries at most 65536"),
        ("\u00b2", "'\u00b2' is not a seed"),  # str.isdigit() took it; int() then failed
        ("\u0661\u0662", "is not a seed"),  # Arabic-Indic digits, taken as seed 12 in silence
    ],
)
def test_bad_seed_list_is_a_usage_error(server: ServerThread, seeds: str, message: str) -> None:
    """Counted before any list is built: a huge range is refused at once, not out of memory."""
    result = gan_client(server.target, "batch", "--seeds", seeds, "--class", "1", "-o", "g.png")
    error = failed_cleanly(result, 2)
    assert "'--seeds'" in error and message in error


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["generate", "--seed", "-1", "--class", "1"], "'--seed'"),
        (["generate", "--seed", str(2**64), "--class", "1"], "'--seed'"),
        (["generate", "--seed", "1", "--truncation", "3"], "'--truncation'"),
        (["batch", "--seeds", "0-3", "--columns", "0"], "'--columns'"),
        (["interpolate", "--from", "1", "--to", "2", "--frames", "1"], "'--frames'"),
        (["interpolate", "--from", "1", "--to", "2", "--frames", str(2**31)], "'--frames'"),
    ],
)
def test_bad_option_value_is_a_usage_error_naming_it(
    server: ServerThread, args: list[str], option: str
) -> None:
    assert option in failed_cleanly(gan_client(server.target, *args, "-o", "x.png"), 2)


@pytest.mark.parametrize(
    ("args", "exit_code", "option", "message"),
    [
        pytest.param(
            ["batch", "--seeds", str(2**64), "--class", "1", "-o", "g.png"],
            2,
            "'--seeds'",
            "is over the largest seed, 2**64-1",
            id="seed-over-uint64",
        ),
        pytest.param(
            ["generate", "--seed", "1", "--class", str(2**31), "-o", "g.png"],
            2,
            "'--class'",
            "2147483648 is not in the range -2147483648<=x<=2147483647",
            id="class-over-int32",
        ),
        pytest.param(
            ["--token-file", "/nonexistent/token", "info"],
            2,
            "'--token-file'",
            "'/nonexistent/token' does not exist",
            id="missing-token-file",
        ),
        pytest.param(
            ["--tls-ca", "/nonexistent/ca.pem", "info"],
            2,
            "'--tls-ca'",
            "'/nonexistent/ca.pem' does not exist",
            id="missing-tls-ca",
        ),
        pytest.param(
            ["generate", "--seed", "1", "--class", "1", "-o", "seven.nosuchformat"],
            2,
            "'-o' / '--output'",
            "cannot write images with suffix '.nosuchformat'",
            id="unknown-image-suffix",
        ),
    ],
)
def test_bad_local_input_fails_without_a_traceback(
    server: ServerThread, args: list[str], exit_code: int, option: str, message: str
) -> None:
    """Refused by the option's own check: a usage error naming the option, no traceback."""
    error = failed_cleanly(gan_client(server.target, *args), exit_code)
    assert f"Invalid value for {option}" in error and message in error


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "missing/dir/seven.png"], "folder missing/dir does not exist"),
        (["-o", "seven.psd"], "cannot write images with suffix '.psd'; use .png, .jpg"),
        (["-o", "seven.xbm"], "cannot write images with suffix '.xbm'"),
    ],
)
def test_an_output_the_images_cannot_be_saved_to_is_refused_before_the_call(
    server: ServerThread, args: list[str], message: str
) -> None:
    before = requests_total(server, "OK")
    error = failed_cleanly(
        gan_client(server.target, "generate", "--seed", "1", "--class", "1", *args), 2
    )
    assert "'-o' / '--output'" in error and message in error
    assert requests_total(server, "OK") == before  # no image was made only to be lost


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timeout", "inf"], "inf is not in the range 0<x<=1000000000"),
        (["--timeout", "1e10"], "is not in the range 0<x<=1000000000"),
        (["--timeout", "nan"], "nan is not a finite number"),
        (["--target", "127.0.0.1:99999"], "port 99999 is not in 1..65535"),
        (["--target", "[::1]:70000"], "port 70000 is not in 1..65535"),
        (["--target", "127.0.0.1:" + "9" * 5000], "port 999999999999... is not in 1..65535"),
        # gRPC reads a sign or spaces in the port: +121537 wraps around to 56001, -1 to 65535.
        (["--target", "127.0.0.1:+121537"], "port '+121537' in '127.0.0.1:+121537' is not a"),
        (["--target", "127.0.0.1:-1"], "port '-1' in '127.0.0.1:-1' is not a number"),
        (["--target", "localhost: 50051"], "port ' 50051' in 'localhost: 50051' is not a"),
        (["--target", "dns:///127.0.0.1:+5"], "port '+5' in 'dns:///127.0.0.1:+5' is not a"),
        (["--target", " "], "the target is empty; give host:port"),
        (["--target", "127.0.0.1"], "the target '127.0.0.1' has no port; give host:port"),
        (["--target", "[::1]"], "has no port"),
        (["--target", "ganserve.serving.svc"], "has no port"),
        (["--target", "localhost:"], "the target 'localhost:' has no port"),
        (["--target", "[::1]:"], "has no port"),
        (["--target", "::1"], "write an IPv6 host as [addr]:port"),
        # The scheme forms a headless Service is dialled by were not checked at all.
        (["--target", "dns:///127.0.0.1:118836"], "port 118836 is not in 1..65535"),
        (["--target", "dns://10.0.0.10/ganserve.svc"], "has no port"),
        (["--target", "dns:///"], "has no address"),
        (["--target", "ipv4:127.0.0.1:80,127.0.0.2"], "has no port"),
        (["--target", "ipv6:[::1]:99999"], "port 99999 is not in 1..65535"),
        (["--target", "\udcff:50051"], "target must be valid UTF-8 text"),
    ],
)
def test_connection_options_gRPC_would_misread_are_refused(args: list[str], message: str) -> None:
    """gRPC wraps port 99999 around to another port, dials 443 for a target without a port,
    and fails an infinite deadline at once."""
    result = CliRunner().invoke(main, [*args, "info"])
    error = failed_cleanly(result, 2)
    assert message in error


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["generate", "--seed", "1", "--truncation", "nan"], 2, "nan is not a finite number"),
        (["batch", "--seeds", "1", "--truncation", "nan"], 2, "nan is not a finite number"),
        (["info", "--model", "\udcff"], 1, "model must be valid UTF-8 text"),
        (["generate", "--seed", "1", "--model-version", "\udcff"], 1, "must be valid UTF-8"),
    ],
)
def test_arguments_the_wire_cannot_carry_are_one_line(
    tmp_path: pathlib.Path, args: list[str], code: int, message: str
) -> None:
    """Refused before any call: the target has no server."""
    if args[0] in ("generate", "batch"):
        args = [*args, "-o", str(tmp_path / "out.png")]
    result = CliRunner().invoke(main, ["--target", "127.0.0.1:9", *args])
    assert message in failed_cleanly(result, code)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe\x00abc", "is not UTF-8 text"),
        (b"  \n", "is empty"),
        ("t\u00f6ken-0123456789".encode(), "cannot carry ('ö' at index 1)"),
        (b"abc\ndef-0123456789", "cannot carry ('\\n' at index 3)"),
        (b"x" * 5000, "is over 4096 bytes"),
    ],
)
def test_a_token_file_gRPC_could_not_send_is_refused(
    tmp_path: pathlib.Path, content: bytes, message: str
) -> None:
    token = tmp_path / "token"
    token.write_bytes(content)
    result = CliRunner().invoke(main, ["--token-file", str(token), "info"])
    assert message in failed_cleanly(result, 2)


def test_a_token_variable_gRPC_could_not_send_is_refused() -> None:
    result = CliRunner().invoke(main, ["info"], env={"GANSERVE_TOKEN": "abc\x01def-0123456789"})
    assert (
        "the token in GANSERVE_TOKEN holds a character gRPC metadata cannot carry"
        in failed_cleanly(result, 2)
    )


def test_tls_files_that_are_not_pem_are_named(tmp_path: pathlib.Path) -> None:
    write_certificates(tmp_path / "a")
    write_certificates(tmp_path / "b")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a pem\n")
    a, b = tmp_path / "a", tmp_path / "b"
    cases = [
        (["--tls-ca", str(junk)], "junk.pem is not a PEM CA certificate"),
        (
            [
                "--tls-ca",
                str(a / "ca.crt"),
                "--tls-cert",
                str(a / "tls.crt"),
                "--tls-key",
                str(b / "tls.key"),
            ],
            f"{a / 'tls.crt'} is not a PEM certificate matching the unencrypted PEM private "
            f"key {b / 'tls.key'}",
        ),
    ]
    for args, message in cases:
        assert message in failed_cleanly(CliRunner().invoke(main, [*args, "info"]), 2)


def test_a_plaintext_call_to_a_tls_server_hints_at_tls(
    start_server_module: Callable[..., ServerThread], tmp_path: pathlib.Path
) -> None:
    write_certificates(tmp_path, name="localhost")
    tls = TlsConfig(cert_file=tmp_path / "tls.crt", key_file=tmp_path / "tls.key")
    server = start_server_module(tls=tls)
    # The server listens on 127.0.0.1 only: "localhost" would also try ::1, whose refusal the
    # error could name instead of the TLS server closing the plaintext connection.
    target = f"127.0.0.1:{server.server.port}"
    error = failed_cleanly(gan_client(target, "info"), 1)
    assert error.startswith("Error: UNAVAILABLE: ") and "is --tls-ca needed?" in error
    assert "seven" in succeeded(
        gan_client(
            target,
            "--server-name",
            "localhost",
            "--tls-ca",
            str(tmp_path / "ca.crt"),
            "generate",
            "--seed",
            "1",
            "--class",
            "7",
            "-o",
            "seven.png",
        )
    )


def test_a_call_to_the_metrics_port_hints_at_the_grpc_port(server: ServerThread) -> None:
    """gRPC's own words are 'Failed parsing HTTP/2 (Expected SETTINGS frame ...)'."""
    error = failed_cleanly(gan_client(f"127.0.0.1:{server.server.metrics_port}", "info"), 1)
    assert error.startswith("Error: UNAVAILABLE: ") and "is it the /metrics port?" in error


def test_a_tls_call_without_the_client_certificate_mtls_asks_for_hints_at_it(
    start_server_module: Callable[..., ServerThread], tmp_path: pathlib.Path
) -> None:
    """The hint told a caller who had given --tls-ca to add --tls-ca."""
    write_certificates(tmp_path, name="localhost")
    tls = TlsConfig(
        cert_file=tmp_path / "tls.crt",
        key_file=tmp_path / "tls.key",
        client_ca_file=tmp_path / "ca.crt",
    )
    target = f"127.0.0.1:{start_server_module(tls=tls).server.port}"
    ca = ["--tls-ca", str(tmp_path / "ca.crt"), "--server-name", "localhost"]
    error = failed_cleanly(gan_client(target, *ca, "info"), 1)
    assert error.startswith("Error: UNAVAILABLE: ")
    assert "are --tls-cert and --tls-key needed?" in error and "is --tls-ca needed" not in error
    pair = ["--tls-cert", str(tmp_path / "tls.crt"), "--tls-key", str(tmp_path / "tls.key")]
    assert '"name": "digits"' in succeeded(gan_client(target, *ca, *pair, "info"))


def test_a_save_that_fails_leaves_the_file_already_there(
    server: ServerThread, tmp_path: pathlib.Path
) -> None:
    """A 1024-image row is over WebP's 16383 pixels: Pillow fails after the call, and the file
    it had opened was left empty."""
    keep = tmp_path / "keep.webp"
    succeeded(gan_client(server.target, "generate", "--seed", "1", "--class", "1", "-o", str(keep)))
    before = keep.read_bytes()
    row = ["batch", "--seeds", "0-1023", "--class", "1", "--columns", "1024", "-o", str(keep)]
    error = failed_cleanly(gan_client(server.target, *row), 1)
    assert error.startswith(f"Error: cannot save {keep}: ") and "16383" in error
    assert keep.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.webp"]  # no temporary left
    assert oct(keep.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_server_name_checks_the_certificate_under_another_name(
    start_server_module: Callable[..., ServerThread], tmp_path: pathlib.Path
) -> None:
    """Through a port-forward the target is localhost, but the certificate names the Service."""
    write_certificates(tmp_path)  # names ganserve.serving.svc only
    tls = TlsConfig(cert_file=tmp_path / "tls.crt", key_file=tmp_path / "tls.key")
    # Not localhost, whose ::1 refusal the error could name instead (the server listens on
    # 127.0.0.1 only).
    target = f"127.0.0.1:{start_server_module(tls=tls).server.port}"
    ca = ["--tls-ca", str(tmp_path / "ca.crt")]
    error = failed_cleanly(gan_client(target, *ca, "info"), 1)
    assert error.startswith("Error: UNAVAILABLE: ")
    assert "give the name it carries with --server-name" in error
    ok = gan_client(target, *ca, "--server-name", "ganserve.serving.svc", "info")
    assert '"name": "digits"' in succeeded(ok)
    wrong = gan_client(target, *ca, "--server-name", "other.serving.svc", "info")
    assert failed_cleanly(wrong, 1).startswith("Error: UNAVAILABLE: ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--server-name", "ganserve.serving.svc"], "checks the server's TLS certificate"),
        (["--tls-ca", "CA", "--server-name", "a b"], "is not a host name or address"),
        (["--tls-ca", "CA", "--server-name", ""], "is not a host name or address"),
    ],
)
def test_a_server_name_without_tls_or_malformed_is_refused(
    tmp_path: pathlib.Path, args: list[str], message: str
) -> None:
    write_certificates(tmp_path)
    args = [str(tmp_path / "ca.crt") if a == "CA" else a for a in args]
    result = CliRunner().invoke(main, ["--target", "127.0.0.1:9", *args, "info"])
    assert message in failed_cleanly(result, 2)


def test_a_tls_call_to_a_plaintext_server_hints_at_plaintext(
    server: ServerThread, tmp_path: pathlib.Path
) -> None:
    write_certificates(tmp_path, name="localhost")
    # Not localhost, whose ::1 refusal the error could name instead (the server listens on
    # 127.0.0.1 only).
    target = f"127.0.0.1:{server.server.port}"
    error = failed_cleanly(gan_client(target, "--tls-ca", str(tmp_path / "ca.crt"), "info"), 1)
    assert error.startswith("Error: UNAVAILABLE: ")
    assert "the server does not speak TLS: leave out --tls-ca" in error


def test_tls_cert_without_tls_key_is_a_usage_error(
    server: ServerThread, tmp_path: pathlib.Path
) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("not used")
    error = failed_cleanly(gan_client(server.target, "--tls-cert", str(cert), "info"), 2)
    assert "--tls-cert and --tls-key go together" in error


def test_unreachable_server_is_unavailable(tmp_path: pathlib.Path) -> None:
    with socket.socket() as sock:  # a loopback port with nothing listening once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = CliRunner().invoke(main, ["--target", f"127.0.0.1:{port}", "--timeout", "5", "info"])
    assert failed_cleanly(result, 1).startswith("Error: UNAVAILABLE: ")


# --- auth ---------------------------------------------------------------------------------------


def test_token_file_authenticates(auth_server: ServerThread, tmp_path: pathlib.Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    output = succeeded(
        CliRunner().invoke(
            main, ["--target", auth_server.target, "--token-file", str(token_file), "models"]
        )
    )
    assert "READY" in output


def test_token_from_the_environment_authenticates(
    auth_server: ServerThread, tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "x.png"
    args = ["generate", "--seed", "46", "--class", "7", "-o", str(out)]
    succeeded(gan_client(auth_server.target, *args, env={"GANSERVE_TOKEN": TOKEN}))
    assert out.is_file()


def test_token_file_from_the_environment_authenticates(
    auth_server: ServerThread, tmp_path: pathlib.Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    result = gan_client(auth_server.target, "info", env={"GANSERVE_TOKEN_FILE": str(token_file)})
    assert json.loads(succeeded(result))["name"] == "digits"


@pytest.mark.parametrize("command", [["info"], ["models"], ["reload"]])
def test_missing_token_is_unauthenticated(auth_server: ServerThread, command: list[str]) -> None:
    error = failed_cleanly(gan_client(auth_server.target, *command), 1)
    assert error.startswith("Error: UNAUTHENTICATED: missing bearer token")


def test_wrong_token_is_unauthenticated(auth_server: ServerThread, tmp_path: pathlib.Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("not-the-right-token")
    result = CliRunner().invoke(
        main, ["--target", auth_server.target, "--token-file", str(token_file), "info"]
    )
    assert failed_cleanly(result, 1).startswith("Error: UNAUTHENTICATED: invalid bearer token")


# --- the Python client's retries ----------------------------------------------------------------


def requests_total(server: ServerThread, code: str) -> float:
    """ganserve_requests_total{code=...} summed over method, model and version."""
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ganserve_requests_total" and sample.labels["code"] == code
    )


def test_retry_policy_retries_only_unavailable() -> None:
    config = json.loads(RetryPolicy(max_attempts=5).service_config())
    (method,) = config["methodConfig"]
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert method["retryPolicy"]["maxAttempts"] == 5
    services = {name["service"] for name in method["name"]}
    assert services == {"ganserve.v1.Generator", "ganserve.v1.ModelAdmin"}


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda c: c.generate(1, 12), "INVALID_ARGUMENT"),
        (lambda c: c.generate_batch([(1, None)]), "INVALID_ARGUMENT"),
        (lambda c: list(c.interpolate(1, 2, 1, 3)), "INVALID_ARGUMENT"),
        (lambda c: c.generate(1, 1, model="nope"), "NOT_FOUND"),
    ],
    ids=["Generate", "GenerateBatch", "Interpolate", "unknown-model"],
)
def test_client_does_not_retry_final_errors(
    server: ServerThread, call: Callable[[GeneratorClient], object], code: str
) -> None:
    """Each failed call reaches the server exactly once, though the client has retries on."""
    calls = 3
    before = requests_total(server, code)
    with GeneratorClient(server.target, retry=RetryPolicy(max_attempts=5)) as client:
        for _ in range(calls):
            with pytest.raises(grpc.RpcError) as info:
                call(client)
            assert info.value.code().name == code
    # The server counts a call just after its status is sent (context.abort sends it, then the
    # handler's bookkeeping runs), so give the last count a moment to land; a retry would
    # have been counted before the client saw the final status.
    deadline = time.monotonic() + 5.0
    while requests_total(server, code) - before < calls and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert requests_total(server, code) - before == calls


@pytest.fixture
def bare_grpc_server() -> Iterator[tuple[grpc.Server, str]]:
    """A gRPC server with no services: every method is UNIMPLEMENTED (not a ganserve)."""
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield server, f"127.0.0.1:{port}"
    server.stop(None)


@pytest.mark.parametrize(
    ("command", "hint"),
    [
        (["models"], "(the server does not serve ModelAdmin: start it with `--admin`)"),
        (["info"], "(the server has no ganserve Generator service: is --target right?)"),
    ],
)
def test_an_unimplemented_service_is_named(
    bare_grpc_server: tuple[grpc.Server, str], command: list[str], hint: str
) -> None:
    """Every UNIMPLEMENTED used to blame ModelAdmin, also for Generate against a non-ganserve."""
    error = failed_cleanly(gan_client(bare_grpc_server[1], *command), 1)
    assert error.startswith("Error: UNIMPLEMENTED") and error.rstrip().endswith(hint)


def test_reload_keeps_a_timeout_that_was_given(bare_grpc_server: tuple[grpc.Server, str]) -> None:
    """`reload` gets at least 120 s by default (loads take time), but --timeout, when given,
    is its deadline too, as the help says."""
    server, target = bare_grpc_server
    release = threading.Event()

    def slow_reload(request: bytes, context: grpc.ServicerContext) -> bytes:
        release.wait(30)
        return b""

    handler = grpc.method_handlers_generic_handler(
        "ganserve.v1.ModelAdmin", {"ReloadModels": grpc.unary_unary_rpc_method_handler(slow_reload)}
    )
    server.add_generic_rpc_handlers((handler,))
    try:
        result = CliRunner().invoke(main, ["--target", target, "--timeout", "0.5", "reload"])
    finally:
        release.set()
    assert failed_cleanly(result, 1).startswith("Error: DEADLINE_EXCEEDED")


def test_a_save_that_cannot_start_names_the_output_not_a_temporary_file(
    server: ServerThread,
) -> None:
    """'cannot write /proc/.a.png.dj73_tsa.png' named a hidden file the user never asked for."""
    error = failed_cleanly(
        gan_client(server.target, "generate", "--seed", "1", "--class", "1", "-o", "/proc/a.png"),
        1,
    )
    assert error.startswith("Error: cannot save /proc/a.png: ") and "/proc/.a.png" not in error


class _BrokenGenerator(generator_pb2_grpc.GeneratorServicer):
    """Breaks the contract: too few images, or an image that does not decode."""

    def GenerateBatch(self, request, context):
        reply = generator_pb2.GenerateBatchResponse()
        if request.items[0].seed == 1:  # one undecodable PNG per item
            for _ in request.items:
                reply.images.add(
                    image=b"not a png", encoding=ImageEncoding.PNG, width=2, height=2, channels=1
                )
        return reply  # otherwise no images at all


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        ("0-3", "the server answered 0 images for 4 items: it is not keeping ganserve's"),
        ("1-2", "cannot read an image in the reply as 2x2x1 PNG: cannot identify image file"),
    ],
)
def test_a_reply_that_breaks_the_contract_is_one_line(seeds: str, message: str) -> None:
    """An empty batch reply was an IndexError traceback; an undecodable image 'cannot write
    None: None'."""
    fake = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
    generator_pb2_grpc.add_GeneratorServicer_to_server(_BrokenGenerator(), fake)
    port = fake.add_insecure_port("127.0.0.1:0")
    fake.start()
    try:
        result = gan_client(f"127.0.0.1:{port}", "batch", "--seeds", seeds, "-o", "g.png")
    finally:
        fake.stop(None)
    assert message in failed_cleanly(result, 1)
    assert not pathlib.Path("g.png").exists()


def test_ctrl_c_is_one_line_and_exit_130(tmp_path: pathlib.Path) -> None:
    """Ctrl-C printed click's 'Aborted!' and exited 1, unlike every other command here."""
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        command = [str(BIN / "gan-client"), "--target", target, "info"]
        proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.5)  # past start-up: waiting on the call
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip() == "interrupted: nothing was written"


def test_an_error_names_the_request_id_the_server_logged(server: ServerThread) -> None:
    given = gan_client(server.target, "--request-id", "job-7", "info", "--model", "nope")
    assert failed_cleanly(given, 1).endswith("(request id job-7)")
    made_up = failed_cleanly(gan_client(server.target, "info", "--model", "nope"), 1)
    assert re.search(r"\(request id [0-9a-f]{16}\)$", made_up)
    for bad, message in (("", "is empty"), ("\u00e9", "cannot carry")):
        error = failed_cleanly(gan_client(server.target, "--request-id", bad, "info"), 2)
        assert "'--request-id'" in error and message in error


def test_a_closed_or_full_standard_output_is_not_blamed_on_the_reply(
    server: ServerThread, tmp_path: pathlib.Path
) -> None:
    """Both were 'cannot read an image in the reply', exit 1. A reader that left (`| head`)
    ends the command quietly, as `cat` would; a full disk is named."""
    command = [str(BIN / "gan-client"), "--target", server.target, "generate", "--seed", "3"]
    command += ["--class", "3", "-o", str(tmp_path / "three.png")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # gone before the command prints
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (141, b"")
    assert (tmp_path / "three.png").stat().st_size > 0  # the image was written all the same
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [str(BIN / "gan-client"), "--target", server.target, "info"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert done.stderr == "Error: cannot write to standard output: No space left on device\n"


def test_an_output_that_is_a_link_is_written_through(
    server: ServerThread, tmp_path: pathlib.Path
) -> None:
    """The rename replaced the link by a file and left its target as it was; a file already
    there lost its permissions."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "target.png").write_bytes(b"old")
    (real / "target.png").chmod(0o640)
    link = tmp_path / "link.png"
    link.symlink_to(real / "target.png")
    succeeded(gan_client(server.target, "generate", "--seed", "1", "--class", "1", "-o", str(link)))
    assert link.is_symlink()
    with Image.open(real / "target.png") as image:
        assert image.size == (32, 32)
    assert (real / "target.png").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in real.iterdir()) == ["target.png"]  # no temporary left


def test_a_target_with_several_addresses_spreads_calls_over_all_of_them(
    start_server: Callable[..., ServerThread],
) -> None:
    """A headless Service's name resolves to every pod; gRPC's default policy (pick_first) sent
    every call to the first address. The client balances round robin."""
    servers = [start_server(), start_server()]
    target = "ipv4:" + ",".join(f"127.0.0.1:{s.server.port}" for s in servers)
    with GeneratorClient(target) as client:
        for seed in range(40):
            assert client.generate(seed=seed, class_label=1).response.image
    served = [scrape(s)["ganserve_requests_total"] for s in servers]
    assert min(served) >= 5 and sum(served) == 40, served
