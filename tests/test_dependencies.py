"""Dependencies point one way: serving and client code never import torch, train or export; the
package metadata keeps torch in the train extra; the images install pinned versions."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import ROOT

SERVING_MODULES = [
    "ganserve.serve.cli",
    "ganserve.serve.server",
    "ganserve.client",
    "ganserve.client.cli",
]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# The one extra that may pull torch: training and export (the train Docker target).
TORCH_EXTRA = "train"
# The images' pip installs take their versions from here (Dockerfile: pip install -c).
CONSTRAINTS = ROOT / "docker" / "constraints.txt"


@pytest.mark.parametrize("module", SERVING_MODULES)
def test_serving_path_never_imports_torch(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', "
        "'ganserve.train', 'ganserve.export', 'onnx.', 'sklearn')))\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def torch_requirements(requirements: list[str]) -> list[str]:
    """The requirements that install torch: torch, torchvision and the other torch* packages,
    or ganserve's own train extra (a self-reference such as ganserve[train])."""
    found = []
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name.startswith("torch") or (
            name == canonicalize_name(PROJECT["name"]) and TORCH_EXTRA in requirement.extras
        ):
            found.append(text)
    return found


@pytest.mark.parametrize(
    "extra",
    [None, *sorted(set(PROJECT["optional-dependencies"]) - {TORCH_EXTRA})],
    ids=lambda extra: extra or "base",
)
def test_only_the_train_extra_names_torch(extra: str | None) -> None:
    """The base install is the serving one, and the gpu and dev extras go beside it: none may
    pull torch (the serving images install the base and gpu; a multi-GB wheel)."""
    requirements = (
        PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
    )
    assert torch_requirements(requirements) == []


def test_the_train_extra_does_name_torch() -> None:
    """The check above looks at the right names: torch is where it belongs."""
    assert torch_requirements(PROJECT["optional-dependencies"][TORCH_EXTRA])


@pytest.mark.parametrize(
    "requirement",
    ["torch==2.13.0", "torchvision>=0.20", "Torch; sys_platform == 'linux'", "ganserve[dev,train]"],
)
def test_torch_check_catches_every_way_of_naming_it(requirement: str) -> None:
    assert torch_requirements(["numpy>=1.26", requirement]) == [requirement]


def _pins() -> dict[str, str]:
    """docker/constraints.txt as {canonical name: the requirement line}."""
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name = canonicalize_name(Requirement(line).name)
            assert name not in pins, f"{name} is pinned twice in {CONSTRAINTS.name}"
            pins[name] = line
    return pins


@pytest.mark.parametrize(
    "requirement",
    [*PROJECT["dependencies"], *PROJECT["optional-dependencies"]["gpu"]],
)
def test_constraints_pin_each_serving_dependency_within_its_range(requirement: str) -> None:
    """Every base dependency (the CPU image's install) and every gpu extra one has an exact pin
    that pyproject.toml's own range accepts, so `pip install -c` can satisfy both."""
    wanted = Requirement(requirement)
    line = _pins().get(canonicalize_name(wanted.name))
    assert line, f"{wanted.name} is not pinned in docker/constraints.txt: add {wanted.name}==X.Y.Z"
    (spec,) = Requirement(line).specifier
    assert spec.operator == "==" and "*" not in spec.version, line
    assert wanted.specifier.contains(spec.version, prereleases=True), (requirement, line)


def test_constraints_hold_exact_versions_only() -> None:
    for line in _pins().values():
        requirement = Requirement(line)
        (spec,) = requirement.specifier
        assert spec.operator == "==" and not requirement.marker and not requirement.extras, line
    assert "torch" not in _pins()  # the train target installs it on its own
