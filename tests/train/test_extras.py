"""The serving install puts gan-train, gan-eval and export-gan on the PATH without torch and
onnx: each then says in one line what to install, not a traceback."""

from __future__ import annotations

import importlib.metadata
import importlib.util

import pytest

from ganserve.train import extras

COMMANDS = {
    "gan-train": extras.gan_train,
    "gan-eval": extras.gan_eval,
    "export-gan": extras.export_gan,
}


def test_the_console_scripts_go_through_the_check() -> None:
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    for command, entry in COMMANDS.items():
        assert scripts[command] == f"ganserve.train.extras:{entry.__name__}"


@pytest.mark.parametrize("hidden", [("torch",), ("torch", "onnx")])
def test_without_the_train_extras_each_command_is_one_line_naming_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], hidden: tuple[str, ...]
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in hidden else find_spec(name, *a),
    )
    assert extras.missing_modules() == list(hidden)
    for command, entry in COMMANDS.items():
        with pytest.raises(SystemExit) as stopped:
            entry()
        assert stopped.value.code == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(
            f"Error: {command} needs the training extras"
        )
        verb = "is" if len(hidden) == 1 else "are"
        assert (
            f"{', '.join(hidden)} {verb} not installed" in err and "pip install '.[train]'" in err
        )


def test_every_module_of_the_train_extra_is_checked() -> None:
    """TRAIN_MODULES follows pyproject's `train` extra: one name per requirement."""
    requires = importlib.metadata.requires("ganserve") or []
    train = [r for r in requires if 'extra == "train"' in r]
    assert len(train) == len(extras.TRAIN_MODULES)
    assert extras.missing_modules() == []  # this environment has them all
