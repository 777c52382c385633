"""Entry points of the commands that need the `train` extras (torch, onnx, scikit-learn, ...).

The serving install (`pip install .`) puts these commands on the PATH too, without the
libraries they import; each then says in one line what to install, instead of a traceback.
Nothing heavy is imported here.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

# Import names of the `train` extra in pyproject.toml.
TRAIN_MODULES = ("torch", "onnx", "onnxscript", "onnxconverter_common", "sklearn", "matplotlib")


def missing_modules() -> list[str]:
    """The `train` extra's modules this environment lacks."""
    return [name for name in TRAIN_MODULES if importlib.util.find_spec(name) is None]


def _run(command: str, target: str) -> None:
    missing = missing_modules()
    if missing:
        sys.stderr.write(
            f"Error: {command} needs the training extras, and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed: install them with "
            "pip install '.[train]' in the ganserve source tree (torch==2.13.0; the README "
            "says how to get its CPU build)\n"
        )
        raise SystemExit(1)
    module, _, function = target.partition(":")
    getattr(importlib.import_module(module), function)()


def gan_train() -> None:
    _run("gan-train", "ganserve.train.cli:main")


def gan_eval() -> None:
    _run("gan-eval", "ganserve.train.eval_cli:main")


def export_gan() -> None:
    _run("export-gan", "ganserve.export.cli:main")
