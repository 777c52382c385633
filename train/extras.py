"""Entry points of the commands that need the `train` extras (torch, onnx, scikit-learn, ...).

The serving install (`pip install .`) puts these commands on the PATH too, without the
libraries they import; each then says in one line what to install, instead of a traceback.

Ctrl-C while a command starts (importing torch takes a second or more) ends it with one line
and exit code 130, never a traceback. It exits at once rather than raising KeyboardInterrupt:
raised inside the imports, KeyboardInterrupt aborted the process from torch's C++ start-up
("terminate called after throwing an instance of ..."), broke numpy's lazy imports (a
RecursionError traceback later), or was swallowed by importlib, after which the command ran on.
Nothing heavy is imported here, not even click: this module loads before that handler is in.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import signal
import sys

# Import names of the `train` extra in pyproject.toml.
TRAIN_MODULES = ("torch", "onnx", "onnxscript", "onnxconverter_common", "sklearn", "matplotlib")

# 128 + SIGINT: what a shell reports for a command that Ctrl-C ended.
INTERRUPTED_EXIT_CODE = 130

# What each command says when Ctrl-C ends it before it handles Ctrl-C itself.
BEFORE_TRAINING = "interrupted before training started; nothing was written"
BEFORE_EVALUATION = "interrupted before the evaluation finished; no figures were written"
BEFORE_EXPORT = "interrupted before the export started; nothing was written"


def missing_modules() -> list[str]:
    """The `train` extra's modules this environment lacks."""
    return [name for name in TRAIN_MODULES if importlib.util.find_spec(name) is None]


def exit_on_ctrl_c(message: str) -> None:
    """From now on, until `ctrl_c_raises` or a handler of the command's own: Ctrl-C writes
    ``Error: <message>`` and exits with code 130 at once. Only for stretches that write
    nothing: no cleanup runs."""

    def stop(signum: int, frame: object) -> None:
        # os.write, not sys.stderr: the handler may run in the middle of a write to it.
        fresh_line = "\n" if os.isatty(2) else ""  # past the terminal's ^C echo, as click does
        os.write(2, f"{fresh_line}Error: {message}\n".encode())
        os._exit(INTERRUPTED_EXIT_CODE)

    with contextlib.suppress(ValueError):  # not the main thread: Ctrl-C is not delivered here
        signal.signal(signal.SIGINT, stop)


def ctrl_c_raises() -> None:
    """From now on Ctrl-C raises KeyboardInterrupt again (Python's default), so writes in
    progress can clean up after themselves."""
    with contextlib.suppress(ValueError):  # not the main thread: Ctrl-C is not delivered here
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _run(command: str, target: str, interrupted: str, *, hand_over: bool) -> None:
    """Check the extras, then import and run ``target``, Ctrl-C exiting at once while it
    loads. With ``hand_over`` that lasts until the command installs handling of its own before
    it writes anything (gan-train's training loop, gan-eval's `ctrl_c_raises`); without, the
    command runs with Python's default."""
    exit_on_ctrl_c(interrupted)
    missing = missing_modules()
    if missing:
        ctrl_c_raises()
        sys.stderr.write(
            f"Error: {command} needs the training extras, and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed: install them with "
            "pip install '.[train]' in the ganserve source tree (torch==2.13.0; the README "
            "says how to get its CPU build)\n"
        )
        raise SystemExit(1)
    module, _, function = target.partition(":")
    main = getattr(importlib.import_module(module), function)
    if not hand_over:
        ctrl_c_raises()
    main()


def gan_train() -> None:
    _run("gan-train", "ganserve.train.cli:main", BEFORE_TRAINING, hand_over=True)


def gan_eval() -> None:
    _run("gan-eval", "ganserve.train.eval_cli:main", BEFORE_EVALUATION, hand_over=True)


def export_gan() -> None:
    _run("export-gan", "ganserve.export.cli:main", BEFORE_EXPORT, hand_over=False)
