"""`gan-train`: train a generator (DCGAN, the original fully-connected GAN, or StyleGAN-style)
and write a checkpoint.

Data: scikit-learn's digits (built in, conditional), a folder of images (one subfolder per
class, or flat for an unconditional model), or a .npz with `images` and optional `labels`.
Alongside the checkpoint, a run folder gets log.jsonl, sample grids, a loss curve and rotating
checkpoints (see `--run-dir`).

Examples:

\b
    gan-train --out checkpoints/digits.pt
    gan-train --out /tmp/tiny.pt --steps 20 --width 8 --eval-per-class 0
    gan-train --out ckpt/digits-hinge.pt --loss hinge --diffaugment translation,cutout
    gan-train --out ckpt/wgan.pt --loss wgan-gp --n-critic 5 --beta1 0 --beta2 0.9
    gan-train --out ckpt/faces.pt --data ~/faces --image-size 64 --width 64 --latent-dim 100
    gan-train --out checkpoints/digits.pt --steps 6000 --resume checkpoints/digits.pt
    gan-train --out ckpt/digits-gan.pt --arch gan --width 128 --steps 5000
    gan-train --out ckpt/digits-style.pt --arch stylegan --width 16 --lr-g 0.002 \\
        --style-mixing 0.9 --diffaugment translation,cutout
    torchrun --standalone --nproc-per-node 2 -m ganserve.train.cli --out ckpt/ddp.pt
"""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import shlex
import signal
import sys
import termios
import threading
import time
from typing import Any

import click
import torch
from click.core import ParameterSource

from ganserve.client.cli import FiniteFloat
from ganserve.train.augment import parse_policy
from ganserve.train.checkpoint import CheckpointError
from ganserve.train.config import check_device
from ganserve.train.data import DataError, load
from ganserve.train.extras import BEFORE_TRAINING, exit_on_ctrl_c
from ganserve.train.loop import Distributed, TrainConfig, TrainingStopped, train
from ganserve.train.losses import Loss
from ganserve.train.monitor import same_file
from ganserve.train.networks import ARCHITECTURES, IMAGE_SIZES, SIZE_RANGES, GeneratorConfig

_positive = FiniteFloat(0, 10, min_open=True)  # learning rates: Adam's above 10 only overflow


def resume_command(args: list[str], checkpoint: str) -> str:
    """The command that goes on from ``checkpoint``: this run's own options (the architecture
    and the losses are not read from the checkpoint, so ``--resume`` alone would refuse it or
    change the run), with its ``--resume`` replaced."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            kept.append(arg)
    return shlex.join(["gan-train", *kept, "--resume", checkpoint])


def _check_policy(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A malformed DiffAugment policy is a usage error; whether 'color' fits the data's channels
    is checked once the data is loaded."""
    try:
        parse_policy(value, channels=3)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    return value


def _check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        check_device(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    return value


@click.command(help=__doc__, context_settings={"show_default": True})
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    required=True,
    help="Checkpoint file to write.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing --out file. Not needed to continue its run with --resume (from "
    "--out itself or from a checkpoint in its run folder).",
)
@click.option("--data", default="digits", help="'digits', an image folder, or a .npz file.")
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    default=None,
    help="Logs, samples and checkpoints [default: <out>-run/].",
)
@click.option(
    "--resume",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    default=None,
    help="Continue exactly from this checkpoint.",
)
@click.option("--steps", type=click.IntRange(1), default=3000, help="Generator steps.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=64)
@click.option("--loss", type=click.Choice([x.value for x in Loss]), default="nonsaturating")
@click.option(
    "--n-critic",
    type=click.IntRange(1, 100),
    default=1,
    help="Discriminator steps per generator step.",
)
@click.option(
    "--gp-weight", type=FiniteFloat(0), default=10.0, help="WGAN-GP penalty (--loss wgan-gp)."
)
@click.option("--r1-gamma", type=FiniteFloat(0), default=0.0, help="R1 penalty (0 = off).")
@click.option(
    "--label-smoothing",
    type=FiniteFloat(0, 0.5, max_open=True),
    default=0.0,
    help="One-sided label smoothing of real targets (--loss nonsaturating, least-squares).",
)
@click.option(
    "--diffaugment",
    default="",
    callback=_check_policy,
    help="DiffAugment policy, e.g. translation,cutout.",
)
@click.option("--lr-g", type=_positive, default=2e-4)
@click.option("--lr-d", type=_positive, default=2e-4)
@click.option("--beta1", type=FiniteFloat(0, 1, max_open=True), default=0.5)
@click.option("--beta2", type=FiniteFloat(0, 1, max_open=True), default=0.999)
@click.option("--ema-decay", type=FiniteFloat(0, 1, max_open=True), default=0.999)
@click.option(
    "--arch",
    type=click.Choice(ARCHITECTURES),
    default="dcgan",
    help="Generator family: DCGAN, the original fully-connected GAN, or StyleGAN-style.",
)
@click.option("--latent-dim", type=click.IntRange(*SIZE_RANGES["latent_dim"]), default=64)
@click.option(
    "--width",
    type=click.IntRange(*SIZE_RANGES["width"]),
    default=32,
    help="dcgan, stylegan: feature maps of G's output-resolution layer (and D's first); "
    "gan: units of G's first hidden layer (and D's last).",
)
@click.option(
    "--embed-dim",
    type=click.IntRange(*SIZE_RANGES["embed_dim"]),
    default=32,
    help="Label embedding length (conditional models).",
)
@click.option(
    "--fc-layers",
    type=click.IntRange(*SIZE_RANGES["fc_layers"]),
    default=3,
    help="gan: hidden layers of G and of D.",
)
@click.option(
    "--w-dim",
    type=click.IntRange(*SIZE_RANGES["w_dim"]),
    default=128,
    help="stylegan: length of w.",
)
@click.option(
    "--mapping-layers",
    type=click.IntRange(*SIZE_RANGES["mapping_layers"]),
    default=4,
    help="stylegan: layers of the mapping network z -> w.",
)
@click.option(
    "--style-mixing",
    type=FiniteFloat(0, 1),
    default=0.0,
    help="stylegan: share of samples trained with mixed styles (0 = off).",
)
@click.option(
    "--device",
    default="auto",
    callback=_check_device,
    help="auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda or cuda:N.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16"]),
    default="fp32",
    help="bf16: mixed precision (bfloat16 autocast; on Ampere-or-newer GPUs it helps).",
)
@click.option("--image-size", type=click.Choice([str(s) for s in IMAGE_SIZES]), default="32")
@click.option("--unconditional", is_flag=True, help="Ignore class labels.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0)
@click.option(
    "--threads",
    type=click.IntRange(0, 1024),
    default=0,
    help="torch CPU threads (0 = torch's default).",
)
@click.option("--log-every", type=click.IntRange(1), default=100)
@click.option("--sample-every", type=click.IntRange(1), default=500)
@click.option("--checkpoint-every", type=click.IntRange(1), default=1000)
@click.option("--keep-last", type=click.IntRange(1), default=3)
@click.option(
    "--eval-per-class",
    type=click.IntRange(0, 2000),
    default=100,
    help="Generated samples per class for the in-loop evaluation (--data digits, conditional; "
    "0 = skip).",
)
def main(
    out: pathlib.Path,
    overwrite: bool,
    data: str,
    run_dir: pathlib.Path | None,
    resume: pathlib.Path | None,
    threads: int,
    image_size: str,
    unconditional: bool,
    arch: str,
    latent_dim: int,
    width: int,
    embed_dim: int,
    fc_layers: int,
    w_dim: int,
    mapping_layers: int,
    **options: object,
) -> None:
    ctx = click.get_current_context()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not out.name:
        raise click.BadParameter("give a checkpoint file name", param_hint="'--out'")
    if not data:
        raise click.BadParameter("give 'digits', an image folder or a .npz", param_hint="'--data'")
    loss = Loss(options.pop("loss"))
    _refuse_options_that_do_not_apply(ctx, loss=loss, arch=arch, unconditional=unconditional)
    run_dir_given = run_dir is not None
    run_dir = run_dir or out.with_name(out.stem + "-run")
    _refuse_writing_over_data(data, out, run_dir, run_dir_given=run_dir_given)
    if out.exists() and not overwrite and not _continues_its_run(out, run_dir, resume):
        # --overwrite replaces the file, not the run folder beside it, which is refused next.
        held = run_dir.is_dir() and any(run_dir.iterdir())
        also = f" and another --run-dir ({run_dir} holds its run)" if held else ""
        raise click.ClickException(
            f"--out {out} already exists: pick another --out, continue its run with --resume "
            f"{out}, or pass --overwrite{also} to replace it"
        )
    if threads:
        torch.set_num_threads(threads)
    distributed = _join_torchrun()
    size = int(image_size)
    lead = not (distributed and distributed.rank)
    bar = None
    try:
        train_set, heldout = load(data, size)
        num_classes = 0 if unconditional else len(train_set.class_names)
        if not num_classes and _given(ctx, "embed_dim"):
            raise click.UsageError(
                f"--embed-dim sizes the label embedding, but --data {data} has no class labels; "
                "drop --embed-dim",
                ctx,
            )
        gen_config = GeneratorConfig(
            architecture=arch,
            latent_dim=latent_dim,
            num_classes=num_classes,
            image_size=size,
            channels=int(train_set.images.shape[1]),
            width=width,
            embed_dim=embed_dim,
            fc_layers=fc_layers,
            w_dim=w_dim,
            mapping_layers=mapping_layers,
        )
        train_config = TrainConfig(loss=loss, **options)
        bar = ProgressBar() if lead and sys.stderr.isatty() else None
        with _StopAtStepEnd(enabled=distributed is None) as stop:
            try:
                ckpt = train(
                    gen_config,
                    train_config,
                    train_set,
                    heldout,
                    out,
                    run_dir=run_dir,
                    resume=resume,
                    distributed=distributed,
                    progress=bar,
                    stop_requested=stop.requested,
                )
            except KeyboardInterrupt:
                # A second Ctrl-C or SIGTERM (the first lets the step end), or one under
                # torchrun.
                error = click.ClickException(
                    "interrupted: stopped at once, without saving the step in progress; the "
                    f"checkpoints saved so far are in {run_dir}"
                )
                error.exit_code = stop.exit_code
                raise error from None
    except TrainingStopped as exc:
        message = str(exc)
        if exc.resume:
            message += f"; continue with: {resume_command(sys.argv[1:], exc.resume)}"
        error = click.ClickException(message)
        error.exit_code = stop.exit_code if stop.requested() else 1
        raise error from None
    except (DataError, CheckpointError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if bar:
            bar.close()
        if distributed:
            torch.distributed.destroy_process_group()
    if distributed and distributed.rank != 0:
        return
    click.echo(f"wrote {out} (step {ckpt['step']}, {_metrics_note(ckpt)}); run: {run_dir}")


def _given(ctx: click.Context, name: str) -> bool:
    """Whether the command line (or the environment) set option ``name`` to a value other than
    its default."""
    source = ctx.get_parameter_source(name)
    if source not in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
        return False
    (param,) = [p for p in ctx.command.params if p.name == name]
    return ctx.params[name] != param.default


def _refuse_options_that_do_not_apply(
    ctx: click.Context, *, loss: Loss, arch: str, unconditional: bool
) -> None:
    """A usage error for an option set on the command line that this run would ignore. Options
    that every loss or family uses (--n-critic, --r1-gamma, ...) are never refused."""
    data = ctx.params["data"]
    evaluates = ctx.params["eval_per_class"] > 0  # 0 asks for what happens anyway: no check
    check = "sizes the in-loop class-accuracy check, which"
    rules = [
        # (option, whether this run ignores it, why)
        (
            "label_smoothing",
            loss not in (Loss.NONSATURATING, Loss.LEAST_SQUARES),
            "smooths the real targets of --loss nonsaturating and least-squares; "
            f"--loss {loss.value} has none",
        ),
        (
            "gp_weight",
            loss is not Loss.WGAN_GP,
            f"weighs the gradient penalty of --loss wgan-gp, which --loss {loss.value} does not "
            "add (--r1-gamma adds a penalty to any loss)",
        ),
        ("style_mixing", arch != "stylegan", f"is for --arch stylegan, not --arch {arch}"),
        ("w_dim", arch != "stylegan", f"is for --arch stylegan, not --arch {arch}"),
        ("mapping_layers", arch != "stylegan", f"is for --arch stylegan, not --arch {arch}"),
        ("fc_layers", arch != "gan", f"is for --arch gan, not --arch {arch}"),
        ("embed_dim", unconditional, "sizes the label embedding, which --unconditional drops"),
        (
            "eval_per_class",
            evaluates and unconditional,
            f"{check} --unconditional models skip (gan-eval measures any checkpoint)",
        ),
        (
            "eval_per_class",
            evaluates and data != "digits",
            f"{check} only --data digits has (its classifier judges the samples), not --data "
            f"{data} (gan-eval measures any checkpoint)",
        ),
    ]
    for name, ignored, why in rules:
        if ignored and _given(ctx, name):
            flag = "--" + name.replace("_", "-")
            raise click.UsageError(f"{flag} {why}; drop {flag}", ctx)


def _refuse_writing_over_data(
    data: str, out: pathlib.Path, run_dir: pathlib.Path, *, run_dir_given: bool
) -> None:
    """A usage error for an output that would write over the training data: an --out that is
    the --data file (the checkpoint replaced it, with --overwrite), or a run folder inside the
    --data folder (its sample grids would be trained on next time, as a class of their own)."""
    if data == "digits":
        return
    source = pathlib.Path(data)
    if same_file(out, source):
        raise click.BadParameter(
            f"{out} is the --data file, which the checkpoint would replace; pick another --out",
            param_hint="'--out'",
        )
    if not source.is_dir():
        return
    try:
        inside = run_dir.resolve().relative_to(source.resolve())
    except ValueError:
        return
    if any(part.startswith(".") for part in inside.parts):
        return  # hidden: the data loader skips it
    default = "" if run_dir_given else f" (beside --out {out} by default)"
    raise click.BadParameter(
        f"the run folder {run_dir}{default} lies in the --data folder {data}, whose images its "
        "sample grids would join; pick another --run-dir",
        param_hint="'--run-dir'",
    )


def _continues_its_run(
    out: pathlib.Path, run_dir: pathlib.Path, resume: pathlib.Path | None
) -> bool:
    """Whether --resume continues the run that wrote --out: from --out itself, or from a
    checkpoint in its run folder (what Ctrl-C saves, and tells to resume from)."""
    if resume is None:
        return False
    source = resume.resolve()
    return source == out.resolve() or source.parent == run_dir.resolve()


def _metrics_note(ckpt: dict[str, Any]) -> str:
    """The checkpoint's metrics and the step they were measured at, which can be earlier than
    its own (the last evaluation's figures are carried forward)."""
    measured = ckpt.get("metrics_step")
    if measured is not None:
        when = f"evaluated at step {measured}"
    elif set(ckpt["metrics"]) <= {"train_seconds"}:
        when = "not evaluated"
    else:
        when = "evaluated at an unrecorded step"  # carried over from an older checkpoint
    return f"metrics {ckpt['metrics']}, {when}"


class ProgressBar:
    """One terminal line: bar, step, last logged losses and images/s, time left."""

    WIDTH = 30

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._drawn = 0.0
        self._first: int | None = None  # the first step drawn (past 1 when resuming)
        self._on_line = False  # the cursor is at the end of the bar
        self._gone = False  # the terminal is: a write failed (it hung up)
        # Log records start on a fresh line instead of after the bar; the bar redraws below.
        self._filter = logging.Filter()
        self._filter.filter = self._before_record  # type: ignore[method-assign]
        for handler in logging.getLogger().handlers:
            handler.addFilter(self._filter)

    def _before_record(self, record: logging.LogRecord) -> bool:
        if self._on_line:
            self._write("\n")
            self._on_line = False
        return True

    def _write(self, text: str) -> None:
        """A failed write (EIO from a terminal that hung up) ends the bar, not the run: it
        would otherwise stop training before the step SIGHUP asked to save."""
        if self._gone:
            return
        try:
            click.echo(text, nl=False, err=True)
        except OSError:
            self._gone = True

    def __call__(self, step: int, steps: int, last: dict[str, float]) -> None:
        now = time.monotonic()
        if now - self._drawn < 0.1 and step != steps:
            return  # ~10 redraws a second are plenty
        self._drawn = now
        if self._first is None:
            self._first = step - 1  # steps before this one were done by an earlier run
        done = int(self.WIDTH * step / steps)
        left = (now - self._started) / max(step - self._first, 1) * (steps - step)
        losses = (
            f"  d {last['d_loss']:.3f}  g {last['g_loss']:.3f}  {last['images_per_s']:.0f} img/s"
            if last
            else ""
        )
        self._write(
            f"\r[{'#' * done}{'.' * (self.WIDTH - done)}] {step}/{steps}{losses}  "
            f"{left / 60:.1f} min left "
        )
        self._on_line = True

    def close(self) -> None:
        self._write("\n")
        for handler in logging.getLogger().handlers:
            handler.removeFilter(self._filter)


# Signals that stop a run at the end of its step, besides Ctrl-C: SIGTERM (kill, timeout, docker
# stop, a Kubernetes pod ending) and SIGHUP (the terminal closed, an ssh session dropped).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class _StopAtStepEnd:
    """Ctrl-C, SIGTERM or SIGHUP (`STOP_SIGNALS`) during training: the first one lets the
    running step finish, so the loop can save a consistent checkpoint and say how to resume; a
    second Ctrl-C or SIGTERM raises KeyboardInterrupt at once (a second SIGHUP does not: a
    closing terminal sends two). Under torchrun, whose ranks would stop at
    different steps, the first Ctrl-C does, and SIGTERM and SIGHUP are left to torchrun. A
    signal already ignored stays ignored (SIGHUP under nohup: the run outlives its terminal).

    It takes over from the start-up's handling (`extras.exit_on_ctrl_c`), whose "nothing was
    written" stops being true here, and leaves Python's defaults behind."""

    def __init__(self, *, enabled: bool) -> None:
        self._enabled = enabled
        self._main_thread = threading.current_thread() is threading.main_thread()
        self._requested = False
        self._signals: list[signal.Signals] = []
        self.signum = signal.SIGINT  # the signal that stopped the run

    @property
    def exit_code(self) -> int:
        """128 + the signal, as shells report a process it ended (130: SIGINT, 143: SIGTERM,
        129: SIGHUP)."""
        return 128 + self.signum

    def requested(self) -> bool:
        return self._requested

    def __enter__(self) -> _StopAtStepEnd:
        if not self._main_thread:
            return self
        if not self._enabled:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            return self
        self._signals = [signal.SIGINT]
        self._signals += [s for s in STOP_SIGNALS if signal.getsignal(s) is signal.SIG_DFL]
        for sig in self._signals:
            signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: object) -> None:
        self._hung_up(signum, frame)
        self._requested = True
        self.signum = signal.Signals(signum)
        # SIGHUP never stops at once: a terminal that closes sends it twice (the shell passes
        # its own on to its jobs, and the kernel sends another as the shell exits).
        for sig in self._signals:
            signal.signal(sig, self._hung_up if sig == signal.SIGHUP else self._at_once)
        logging.getLogger(__name__).warning(
            "%s: finishing this step to save a checkpoint (%s to stop now)",
            "interrupted" if signum == signal.SIGINT else f"stopped by {self.signum.name}",
            {signal.SIGINT: "Ctrl-C again", signal.SIGTERM: "SIGTERM again"}.get(
                self.signum, "SIGTERM"
            ),
        )

    def _hung_up(self, signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:
            _leave_a_hung_up_terminal()

    def _at_once(self, signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        if self._main_thread:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for sig in STOP_SIGNALS:
                if sig in self._signals:
                    # Stopping: the closing terminal's second SIGHUP must not kill the run
                    # before it exits as it says (129, how to resume).
                    stopping = sig == signal.SIGHUP and self._requested
                    signal.signal(sig, signal.SIG_IGN if stopping else signal.SIG_DFL)


def _leave_a_hung_up_terminal() -> None:
    """Point stdout and stderr at /dev/null where they are a terminal that hung up (closed, or
    its ssh session dropped): every write there fails with EIO, and the message saying how to
    resume would end the run with a traceback and exit code 1 instead of 129. A terminal still
    there (``kill -HUP``), a file or a pipe is left as it is."""
    for fd in (1, 2):
        try:
            termios.tcgetattr(fd)
            continue  # a terminal still there
        except termios.error as exc:
            if exc.args[0] != errno.EIO:  # ENOTTY: a file or a pipe
                continue
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)


# What torch.distributed's env:// rendezvous reads besides WORLD_SIZE; torchrun sets them all.
TORCHRUN_VARIABLES = ("RANK", "MASTER_ADDR", "MASTER_PORT")


def _join_torchrun() -> Distributed | None:
    """Under torchrun (WORLD_SIZE > 1), join the job: NCCL on GPUs, gloo on CPUs."""
    raw = os.environ.get("WORLD_SIZE", "1")
    if not raw.isdigit():
        raise click.ClickException(f"WORLD_SIZE={raw!r} is not a process count (torchrun sets it)")
    world = int(raw)
    if world <= 1:
        return None
    missing = [name for name in TORCHRUN_VARIABLES if not os.environ.get(name)]
    if missing:
        raise click.ClickException(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set: start multi-process training "
            "with torchrun (it sets them all), or unset WORLD_SIZE for one process"
        )
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank()
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)  # one log, from rank 0
    return Distributed(rank=rank, world_size=world)


if __name__ == "__main__":  # torchrun -m ganserve.train.cli
    exit_on_ctrl_c(BEFORE_TRAINING)
    sys.exit(main())
