"""The Dockerfile keeps the rules a platform team checks for: pinned bases, non-root numeric user,
exec-form entry points, no torch in the serving images, a gRPC health check, the server's ports,
a read-only root filesystem. No Docker engine runs here, so the file is parsed and linted; the
HEALTHCHECK command itself runs against a real server."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import dockerfile_lint as lint
import pytest

from conftest import ROOT, ServerThread, write_certificates
from ganserve.serve.config import ServerConfig

DOCKERFILE = ROOT / "Dockerfile"
CONSTRAINTS = "/src/docker/constraints.txt"  # docker/constraints.txt, as the source stage copies it
SERVING = ("cpu", "gpu")
RUNTIME = ("cpu", "gpu", "train")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ServerConfig)}
PORTS = {_DEFAULTS["port"], _DEFAULTS["metrics_port"]}
BUNDLED_FILES = ("model.onnx", "model.fp16.onnx", "metadata.json")


def run_lint(text: str) -> list[str]:
    return lint.lint(text, serving_stages=SERVING, ports=PORTS, runtime_stages=RUNTIME)


def stage(name: str) -> lint.Stage:
    return {s.name: s for s in lint.stages(DOCKERFILE.read_text())}[name]


def test_dockerfile_keeps_every_rule() -> None:
    assert run_lint(DOCKERFILE.read_text()) == []


def test_serving_targets_have_the_expected_bases_and_installs() -> None:
    cpu, gpu = stage("cpu"), stage("gpu")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", cpu.base)
    assert (
        stage(gpu.base).base.startswith("nvidia/cuda:") and "cudnn-runtime" in stage(gpu.base).base
    )
    gpu_install = " ".join(i.args for i in stage("builder-gpu").all("RUN"))
    assert '"/src[gpu]"' in gpu_install and "pip uninstall -y onnxruntime" in gpu_install
    cpu_install = " ".join(i.args for i in stage("builder-cpu").all("RUN"))
    assert f"pip install -c {CONSTRAINTS} /src " in cpu_install
    assert "[" not in cpu_install  # no extras at all


def _pip_installs(stage_name: str) -> list[str]:
    """Each `pip install` command of a stage's RUN instructions."""
    return [
        command.strip()
        for instruction in stage(stage_name).all("RUN")
        for command in re.split(r"&&|;|\|\|", instruction.args)
        if re.search(r"\bpip install\b", command)
    ]


@pytest.mark.parametrize("builder", ["builder-cpu", "builder-gpu"])
def test_serving_installs_take_their_versions_from_the_constraints_file(builder: str) -> None:
    """pyproject.toml's ranges are open: without -c a rebuild installs whatever is newest."""
    installs = _pip_installs(builder)
    assert installs
    for command in installs:
        assert f"pip install -c {CONSTRAINTS} " in command, command
    copies = [i.args.split() for i in stage("source").all("COPY")]
    assert ["docker/constraints.txt", "docker/"] in copies  # /src/docker/constraints.txt
    assert stage("source").last("WORKDIR").args == "/src"
    assert (ROOT / "docker" / "constraints.txt").is_file()


def test_the_gpu_extra_pins_builds_for_the_gpu_images_cuda_major() -> None:
    """PyPI's onnxruntime-gpu from 1.27, unsuffixed tensorrt from 10.16 and cuda-python 13 are
    CUDA 13 builds; on the CUDA 12 base their libraries (libcudart.so.13, ...) are missing, and
    ONNX Runtime still lists the CUDA provider, so only a model load on a GPU would fail."""
    major = int(re.match(r"nvidia/cuda:(\d+)\.", stage(stage("gpu").base).base)[1])
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["gpu"]
    pins = {re.match(r"[a-z0-9-]+", d)[0]: d for d in extra}
    assert major == 12, "a new CUDA major: change the gpu extra's pins and this test with it"
    assert pins["onnxruntime-gpu"].endswith(",<1.27")
    # TensorRT 10 (ORT's provider links .so.10), one exact version: plans run only under the
    # TensorRT that built them.
    assert re.fullmatch(r"tensorrt-cu12==10(\.\d+)+", pins["tensorrt-cu12"])
    assert pins["cuda-python"].endswith(",<13")
    assert "tensorrt" not in pins
    gpu_install = " ".join(i.args for i in stage("builder-gpu").all("RUN"))
    assert "libonnxruntime_providers_cuda.so" in gpu_install and "not found" in gpu_install
    assert "${PROVIDER%cuda.so}tensorrt.so" in gpu_install  # the TensorRT provider's too


@pytest.mark.parametrize("name", SERVING)
def test_serving_images_bake_in_the_bundled_model_without_its_checkpoint(name: str) -> None:
    copies = [i.args.split() for i in stage(name).all("COPY") if not i.args.startswith("--")]
    (sources_and_dest,) = [c for c in copies if c[-1].startswith("/models/")]
    *sources, dest = sources_and_dest
    assert dest == "/models/digits/2/"
    assert sorted(sources) == sorted(f"models/digits/2/{f}" for f in BUNDLED_FILES)
    assert all((ROOT / source).is_file() for source in sources)
    assert (stage(name).last("CMD").exec_form() or [])[:2] == ["--model-repository", "/models"]


def test_gpu_image_keeps_tensorrt_engines_in_the_cache_volume() -> None:
    cmd = stage("gpu").last("CMD").exec_form() or []
    assert cmd[cmd.index("--engine-cache-dir") + 1] == "/var/cache/ganserve"


# --- each rule can fail -------------------------------------------------------------------------

GOOD = """\
ARG BASE=python:3.11.14-slim-bookworm
FROM ${BASE} AS builder-cpu
RUN python -m venv /opt/venv && /opt/venv/bin/pip install /src
FROM ${BASE} AS cpu
ENV PYTHONDONTWRITEBYTECODE=1 HOME=/tmp TMPDIR=/tmp
COPY --from=builder-cpu /opt/venv /opt/venv
USER 65532:65532
EXPOSE 50051 8000
HEALTHCHECK --interval=10s CMD ["python", "-m", "ganserve.serve.healthcheck"]
ENTRYPOINT ["ganserve", "serve"]
CMD ["--model-repository", "/models"]
FROM cpu AS gpu
FROM ${BASE} AS train
RUN install -d -o 65532 -g 65532 /work
WORKDIR /work
USER 65532
ENTRYPOINT ["gan-train"]
"""

BAD = {
    lint.PINNED_BASE: [
        ("ARG BASE=python:3.11.14-slim-bookworm", "ARG BASE=python:latest"),
        ("ARG BASE=python:3.11.14-slim-bookworm", "ARG BASE=python"),
        ("ARG BASE=python:3.11.14-slim-bookworm", "ARG BASE"),
    ],
    lint.NON_ROOT_USER: [
        ("USER 65532:65532", "USER root"),
        ("USER 65532:65532", "USER 0:0"),
        ("USER 65532\n", "USER app\n"),
    ],
    lint.EXEC_FORM: [
        ('ENTRYPOINT ["gan-train"]', "ENTRYPOINT gan-train"),
        ('CMD ["--model-repository", "/models"]', "CMD --model-repository /models"),
    ],
    lint.NO_TORCH: [
        ("pip install /src", "pip install /src torch==2.13.0"),
        ("pip install /src", "pip install '/src[train]'"),
        ("pip install /src", "pip install /src[gpu,dev]"),
    ],
    lint.HEALTHCHECK: [
        ("ganserve.serve.healthcheck", "http.server"),
        ('HEALTHCHECK --interval=10s CMD ["python"', 'HEALTHCHECK NONE\nLABEL x=["python"'),
    ],
    lint.EXPOSE: [("EXPOSE 50051 8000", "EXPOSE 50051"), ("EXPOSE 50051 8000", "EXPOSE 80 8000")],
    lint.ENTRYPOINT: [('ENTRYPOINT ["ganserve", "serve"]', 'ENTRYPOINT ["python", "-m", "x"]')],
    lint.READ_ONLY_ENV: [
        ("PYTHONDONTWRITEBYTECODE=1 ", ""),
        ("HOME=/tmp ", "HOME=/home/app "),
    ],
    lint.VENV_ONLY: [("COPY --from=builder-cpu /opt/venv", "COPY --from=builder-cpu /src")],
    lint.WRITABLE_WORKDIR: [
        ("RUN install -d -o 65532 -g 65532 /work\n", ""),
        ("RUN install -d -o 65532 -g 65532 /work", "RUN install -d -o 1000 /work"),
    ],
}


def test_good_example_keeps_every_rule() -> None:
    assert run_lint(GOOD) == []


@pytest.mark.parametrize(
    ("rule", "old", "new"),
    [(rule, old, new) for rule, cases in BAD.items() for old, new in cases],
    ids=[f"{rule}-{i}" for rule, cases in BAD.items() for i in range(len(cases))],
)
def test_each_rule_fires_on_a_bad_dockerfile(rule: str, old: str, new: str) -> None:
    assert old in GOOD
    problems = run_lint(GOOD.replace(old, new, 1))
    assert problems, f"{rule} did not fire"
    assert {p.split(":")[0] for p in problems} == {rule}, problems


def test_every_rule_has_a_failing_example() -> None:
    assert set(BAD) == set(lint.RULES)


def test_parser_joins_continuations_and_skips_comments_inside_them() -> None:
    text = "FROM a:1 AS x\nRUN one \\\n  # a comment\n\n  two\nUSER 1\n"
    (x,) = lint.stages(text)
    assert [(i.keyword, i.args, i.line) for i in x.instructions] == [
        ("RUN", "one   two", 2),
        ("USER", "1", 6),
    ]


# --- .dockerignore ------------------------------------------------------------------------------


def _ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for these patterns: a path is out if it or a parent matches."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            return True
    return False


def test_dockerignore_keeps_out_environments_and_checkpoints_but_not_what_copy_needs() -> None:
    patterns = _ignore_patterns()
    assert not any(p.startswith("!") for p in patterns)
    for path in (".git", ".venv/bin/python", "build/x", "models/digits/2/checkpoint.pt"):
        assert _ignored(path, patterns), path
    sources = []
    for s in lint.stages(DOCKERFILE.read_text()):
        for instruction in s.all("COPY"):
            flags, rest = instruction.flags()
            if "from" not in flags:
                sources += rest.split()[:-1]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _ignored(source, patterns), source


# --- the HEALTHCHECK command, run for real ------------------------------------------------------


def run_healthcheck(
    argv: list[str], port: int | str, **variables: str
) -> subprocess.CompletedProcess[str]:
    assert argv[0] == "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANSERVE_")}
    env["GANSERVE_PORT"] = str(port)
    env.update(variables)
    return subprocess.run(
        [sys.executable, *argv[1:]], env=env, capture_output=True, text=True, timeout=30
    )


def test_both_images_share_one_healthcheck_command() -> None:
    assert lint.healthcheck_argv(stage("cpu")) == lint.healthcheck_argv(stage("gpu"))


def test_healthcheck_passes_on_a_serving_server(bundled_server: ServerThread) -> None:
    result = run_healthcheck(lint.healthcheck_argv(stage("cpu")), bundled_server.server.port)
    assert result.returncode == 0, result.stderr


def test_healthcheck_fails_when_nothing_listens() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        result = run_healthcheck(lint.healthcheck_argv(stage("cpu")), port)
    # 1: not serving or unreachable (2 would blame the probe's own settings).
    assert result.returncode == 1, result.stderr
    assert "health check failed: UNAVAILABLE" in result.stderr


@pytest.mark.parametrize(
    ("port", "variables", "message"),
    [
        ("50051", {"GANSERVE_HEALTH_CA": "/nonexistent/ca.crt"}, "GANSERVE_HEALTH_CA=/nonexistent"),
        ("http", {}, "GANSERVE_PORT='http' is not a port"),
        ("²", {}, "GANSERVE_PORT='²' is not a port"),  # isdigit(), but int() raised
        ("٥٠٠٥١", {}, "GANSERVE_PORT='٥٠٠٥١' is not a port"),  # gRPC could not dial it
        (
            "50051",
            {"GANSERVE_HEALTH_CERT": "{dir}/tls.crt", "GANSERVE_HEALTH_KEY": "{dir}/tls.key"},
            "GANSERVE_HEALTH_CERT and GANSERVE_HEALTH_KEY set but GANSERVE_HEALTH_CA is not",
        ),
        ("50051", {"GANSERVE_HEALTH_CA": "/etc/hostname"}, "GANSERVE_HEALTH_CA: not a PEM CA"),
        (
            "50051",
            {
                "GANSERVE_HEALTH_CA": "{ca}",
                "GANSERVE_HEALTH_CERT": "/etc/hostname",
                "GANSERVE_HEALTH_KEY": "/etc/hostname",
            },
            "GANSERVE_HEALTH_CERT and GANSERVE_HEALTH_KEY: not a PEM certificate and its key",
        ),
        # Half a client pair made gRPC abort the probe (SIGABRT, exit 134).
        (
            "50051",
            {"GANSERVE_HEALTH_CA": "{ca}", "GANSERVE_HEALTH_KEY": "{dir}/tls.key"},
            "GANSERVE_HEALTH_KEY is set but GANSERVE_HEALTH_CERT is not",
        ),
        (
            "50051",
            {"GANSERVE_HEALTH_CA": "{ca}", "GANSERVE_HEALTH_CERT": "{dir}/both.pem"},
            "GANSERVE_HEALTH_CERT is set but GANSERVE_HEALTH_KEY is not",
        ),
    ],
)
def test_a_misconfigured_healthcheck_says_which_setting(
    port: str, variables: dict[str, str], message: str, tmp_path: pathlib.Path
) -> None:
    write_certificates(tmp_path)
    both = (tmp_path / "tls.crt").read_bytes() + (tmp_path / "tls.key").read_bytes()
    (tmp_path / "both.pem").write_bytes(both)  # a certificate file that holds its key too
    variables = {k: v.format(ca=tmp_path / "ca.crt", dir=tmp_path) for k, v in variables.items()}
    result = run_healthcheck(lint.healthcheck_argv(stage("cpu")), port, **variables)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert message in result.stderr
