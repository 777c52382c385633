"""Runs people can follow and continue: log, samples, rotating checkpoints, exact resume."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import pty
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image

from ganserve.train import checkpoint, loop
from ganserve.train.cli import resume_command
from ganserve.train.data import ImageDataset, load_digits_split
from ganserve.train.loop import TrainConfig, TrainingStopped, train
from ganserve.train.losses import Loss
from ganserve.train.monitor import run_checkpoints
from ganserve.train.networks import GeneratorConfig

GEN = GeneratorConfig(width=8, latent_dim=16, embed_dim=8)


def run(
    tmp: pathlib.Path,
    steps: int,
    *,
    resume: pathlib.Path | None = None,
    name: str = "run",
    stop_requested: Callable[[], bool] | None = None,
    **options: object,
) -> dict:
    data, heldout = load_digits_split(32)
    defaults = {
        "batch_size": 16,
        "log_every": 5,
        "sample_every": 5,
        "checkpoint_every": 5,
        "keep_last": 2,
        "eval_per_class": 5,
    }
    config = TrainConfig(steps=steps, **{**defaults, **options})
    return train(
        GEN,
        config,
        data,
        heldout,
        tmp / f"{name}.pt",
        run_dir=tmp / name,
        resume=resume,
        stop_requested=stop_requested,
    )


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"loss": Loss.WGAN_GP, "n_critic": 2, "beta1": 0.0, "beta2": 0.9},
        {"loss": Loss.HINGE, "r1_gamma": 1.0, "diffaugment": "translation,cutout"},
    ],
)
def test_resume_continues_exactly(tmp_path: pathlib.Path, options: dict) -> None:
    straight = run(tmp_path, 20, name="straight", **options)
    run(tmp_path, 10, name="first", **options)
    resumed = run(tmp_path, 20, name="first", resume=tmp_path / "first.pt", **options)
    for key in ("generator", "generator_ema", "discriminator"):
        for name, tensor in straight[key].items():
            assert torch.equal(tensor, resumed[key][name]), f"{key}.{name} differs"
    assert resumed["step"] == 20 and len(resumed["history"]) == len(straight["history"])


def test_run_folder_holds_log_samples_curve_and_rotating_checkpoints(
    tmp_path: pathlib.Path,
) -> None:
    run(tmp_path, 20)
    folder = tmp_path / "run"
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    assert all(r["images_per_s"] > 0 for r in records)
    assert sorted(p.name for p in folder.glob("ckpt_*.pt")) == ["ckpt_000015.pt", "ckpt_000020.pt"]
    best = checkpoint.load(folder / "best.pt")
    assert "sample_class_accuracy" in best["metrics"]
    grid = Image.open(folder / "samples" / "step_000020.png")
    assert grid.size == (10 * 34, 10 * 34)  # 10 seeds x 10 classes of 32x32 with borders
    assert (folder / "losses.png").read_bytes().startswith(b"\x89PNG")


def test_resume_refuses_changed_settings(tmp_path: pathlib.Path) -> None:
    run(tmp_path, 5, name="a")
    with pytest.raises(ValueError, match=r"training settings differ.*loss"):
        run(tmp_path, 10, name="a", resume=tmp_path / "a.pt", loss=Loss.HINGE)
    with pytest.raises(ValueError, match="ask for more --steps"):
        run(tmp_path, 5, name="a", resume=tmp_path / "a.pt")
    stripped = checkpoint.load(tmp_path / "a.pt")
    del stripped["rng"], stripped["optimizer_d"]
    checkpoint.save(stripped, tmp_path / "stripped.pt")
    with pytest.raises(ValueError, match="lacks optimizer_d, rng"):
        run(tmp_path, 10, name="a", resume=tmp_path / "stripped.pt")


def test_a_stop_request_saves_a_checkpoint_that_resumes_exactly(tmp_path: pathlib.Path) -> None:
    """Ctrl-C's path: the step in progress ends, its checkpoint is saved, and resuming from it
    gives the same weights as a run that never stopped."""
    straight = run(tmp_path, 12, name="straight")
    calls = iter(range(1000))
    with pytest.raises(TrainingStopped, match=r"interrupted after step 7 of 12: saved .*") as stop:
        run(tmp_path, 12, name="stopped", stop_requested=lambda: next(calls) >= 6)
    saved = tmp_path / "stopped" / "ckpt_000007.pt"
    assert stop.value.resume == str(saved)
    assert not (tmp_path / "stopped.pt").exists()
    resumed = run(tmp_path, 12, name="stopped", resume=saved)
    for key in ("generator", "generator_ema", "discriminator"):
        for name, tensor in straight[key].items():
            assert torch.equal(tensor, resumed[key][name]), f"{key}.{name} differs"


def test_losses_that_stop_being_finite_stop_the_run(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No NaN checkpoint is written and reported as a success."""
    real = loop.generator_loss
    monkeypatch.setattr(loop, "generator_loss", lambda *args: real(*args) * float("nan"))
    with pytest.raises(
        TrainingStopped,
        match=r"training diverged at step 5 \(.*g_loss nan\): no checkpoint was written",
    ):
        run(tmp_path, 10)
    assert not (tmp_path / "run.pt").exists()
    assert not list((tmp_path / "run").glob("*.pt"))


def test_a_new_run_into_a_folder_holding_a_run_is_refused(tmp_path: pathlib.Path) -> None:
    """The rotation sorts checkpoints by name: a new run's step-5 checkpoint would be deleted
    for an old step-10 one."""
    run(tmp_path, 10)
    with pytest.raises(
        ValueError, match=r"already holds a run; continue it with --resume .*ckpt_000010"
    ):
        run(tmp_path, 5)
    run(tmp_path, 15, resume=tmp_path / "run" / "ckpt_000010.pt")  # continuing it is fine


def test_resuming_from_an_older_checkpoint_of_the_run_is_refused(tmp_path: pathlib.Path) -> None:
    """The rotation once deleted the checkpoint it had just written (the oldest step in the
    folder) and the resume's own source, keeping the abandoned line's later ones."""
    run(tmp_path, 20)  # keeps ckpt_000015 and ckpt_000020
    with pytest.raises(
        ValueError, match=r"holds checkpoints past step 15 \(ckpt_000020.pt .. ckpt_000020.pt\)"
    ):
        run(tmp_path, 30, resume=tmp_path / "run" / "ckpt_000015.pt")
    assert sorted(p.name for p in (tmp_path / "run").glob("ckpt_*")) == [
        "ckpt_000015.pt",
        "ckpt_000020.pt",
    ]
    run(tmp_path, 25, name="branch", resume=tmp_path / "run" / "ckpt_000015.pt")  # elsewhere
    assert (tmp_path / "branch" / "ckpt_000025.pt").is_file()


def test_checkpoints_rotate_by_step_number_not_name(tmp_path: pathlib.Path) -> None:
    """ckpt_1000000.pt sorts before ckpt_999999.pt as text: the newest were deleted."""
    for step in (999_998, 999_999, 1_000_000, 1_000_001):
        (tmp_path / f"ckpt_{step:06d}.pt").touch()
    (tmp_path / "ckpt_other.pt").touch()
    assert [p.name for p in run_checkpoints(tmp_path)] == [
        "ckpt_999998.pt",
        "ckpt_999999.pt",
        "ckpt_1000000.pt",
        "ckpt_1000001.pt",
    ]


def test_resume_refuses_other_data(tmp_path: pathlib.Path) -> None:
    run(tmp_path, 5, name="a")
    data, heldout = load_digits_split(32)
    other = dataclasses.replace(data, images=data.images.flip(-1))
    config = TrainConfig(steps=10, batch_size=16, keep_last=2, eval_per_class=0)
    with pytest.raises(ValueError, match=r"--resume: the checkpoint was trained on .*resume on"):
        train(GEN, config, other, heldout, tmp_path / "b.pt", resume=tmp_path / "a.pt")


def test_a_checkpoint_that_cannot_be_written_leaves_no_partial_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(obj: object, f: Any) -> None:
        f.write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(checkpoint.CheckpointError, match=r"cannot write .*x.pt: \[enforce"):
        checkpoint.save({}, tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_second_ctrl_c_during_a_save_leaves_no_partial_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(obj: object, f: Any) -> None:
        f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save({}, tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_stop_request_after_the_losses_went_nan_saves_no_checkpoint(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only log and checkpoint steps checked the losses: a Ctrl-C between them saved a NaN
    checkpoint and said to resume from it."""
    real = loop.generator_loss
    monkeypatch.setattr(loop, "generator_loss", lambda *args: real(*args) * float("nan"))
    calls = iter(range(1000))
    with pytest.raises(TrainingStopped, match=r"training diverged at step 3 .*g_loss nan"):
        run(
            tmp_path,
            100,
            log_every=50,
            sample_every=50,
            checkpoint_every=50,
            stop_requested=lambda: next(calls) >= 2,
        )
    assert not list((tmp_path / "run").glob("*.pt"))


@pytest.mark.parametrize(
    ("damage", "part"),
    [
        (
            lambda c: c["discriminator"].update(x=c["discriminator"].popitem()[1][:1]),
            "discriminator",
        ),
        (lambda c: c.update(generator={}), "generator"),
        (lambda c: c["optimizer_g"].update(state={0: {"step": "x"}}), "optimizer_g"),
        (lambda c: c["rng"].update(torch=c["rng"]["torch"].float()), "rng.torch"),
    ],
    ids=["discriminator", "generator", "optimizer", "rng"],
)
def test_a_checkpoint_whose_parts_do_not_fit_is_one_error_and_leaves_no_folder(
    tmp_path: pathlib.Path, damage: Callable[[dict], None], part: str
) -> None:
    """Only generator_ema was checked: the rest failed in torch with a traceback, after the
    run folder was made."""
    run(tmp_path, 5, name="a")
    ckpt = checkpoint.load(tmp_path / "a.pt")
    damage(ckpt)
    checkpoint.save(ckpt, tmp_path / "damaged.pt")
    with pytest.raises(
        ValueError, match=f"--resume: the checkpoint's {part} does not fit this run"
    ):
        run(tmp_path, 10, name="b", resume=tmp_path / "damaged.pt")
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.pt").exists()


def test_resuming_into_a_folder_holding_another_run_is_refused(tmp_path: pathlib.Path) -> None:
    """The folder's run lost its checkpoints to the rotation, and its log was mixed with the
    resumed run's."""
    run(tmp_path, 10, name="a")
    calls = iter(range(1000))
    with pytest.raises(TrainingStopped):
        run(tmp_path, 20, name="b", stop_requested=lambda: next(calls) >= 4)
    before = sorted(p.name for p in (tmp_path / "b").iterdir())
    with pytest.raises(ValueError, match=r"already holds a run other than the one .*a\.pt"):
        run(tmp_path, 15, name="b", resume=tmp_path / "a.pt")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == before
    # Resuming from the --out of another run, with this folder named: still another run's.
    data, heldout = load_digits_split(32)
    config = TrainConfig(steps=15, batch_size=16, keep_last=2, eval_per_class=0)
    with pytest.raises(ValueError, match=r"already holds a run other than the one .*a\.pt"):
        train(
            GEN,
            config,
            data,
            heldout,
            tmp_path / "a.pt",
            run_dir=tmp_path / "b",
            resume=tmp_path / "a.pt",
        )
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == before
    run(tmp_path, 15, name="a", resume=tmp_path / "a.pt")  # its own run: fine


def test_every_checkpoint_counts_the_training_time_of_the_runs_before_it(
    tmp_path: pathlib.Path,
) -> None:
    """Only the final checkpoint carried train_seconds, so a run resumed from a run-folder
    checkpoint counted the earlier sessions as nothing, and its log's seconds began at 0."""
    run(tmp_path, 10, name="a")
    middle = checkpoint.load(tmp_path / "a" / "ckpt_000010.pt")
    earlier = middle["metrics"]["train_seconds"]
    assert earlier > 0
    resumed = run(tmp_path, 15, name="a", resume=tmp_path / "a" / "ckpt_000010.pt")
    assert resumed["metrics"]["train_seconds"] >= earlier
    seconds = [record["seconds"] for record in resumed["history"]]
    assert seconds == sorted(seconds) and seconds[-1] >= earlier


def test_outputs_that_cannot_be_written_are_refused_before_training(
    tmp_path: pathlib.Path,
) -> None:
    (tmp_path / "afile").touch()
    data, heldout = load_digits_split(32)
    config = TrainConfig(steps=5, batch_size=8, eval_per_class=0)
    with pytest.raises(
        ValueError, match=r"cannot write --out .*afile/x.pt: .*afile is not a folder"
    ):
        train(GEN, config, data, heldout, tmp_path / "afile" / "x.pt")
    with pytest.raises(ValueError, match=r"cannot create the run folder .*afile: a file is in"):
        train(GEN, config, data, heldout, tmp_path / "x.pt", run_dir=tmp_path / "afile")
    for run_dir in (tmp_path / "y.pt", tmp_path / "y.pt" / "inner"):  # --out would be a folder
        with pytest.raises(ValueError, match=r"the run folder .* cannot be --out .*y.pt or inside"):
            train(GEN, config, data, heldout, tmp_path / "y.pt", run_dir=run_dir)
    # The folders made to try writing go again: --out's here, when the run folder fails.
    with pytest.raises(ValueError, match=r"cannot create the run folder .*afile/run: a file is"):
        train(
            GEN,
            config,
            data,
            heldout,
            tmp_path / "new" / "x.pt",
            run_dir=tmp_path / "afile" / "run",
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_only_the_built_in_digits_are_judged_by_the_digits_classifier() -> None:
    data, _ = load_digits_split(8)
    assert loop._is_builtin_digits(data)
    other = ImageDataset("digits-train", data.images.flip(0), data.labels, data.class_names)
    assert not loop._is_builtin_digits(other)  # a digits.npz of the user's own


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--lr-g", "inf"], {}, "Invalid value for '--lr-g': inf is not in the range 0<x<=10"),
        (["--gp-weight", "nan"], {}, "Invalid value for '--gp-weight': nan is not a finite number"),
        (["--seed", str(2**70)], {}, "Invalid value for '--seed'"),
        (["--threads", str(10**11)], {}, "Invalid value for '--threads'"),
        (["--data", ""], {}, "Invalid value for '--data'"),
        ([], {"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a process count"),
        (
            [],
            {"WORLD_SIZE": "2", "RANK": None, "MASTER_ADDR": None, "MASTER_PORT": None},
            "WORLD_SIZE=2 but RANK, MASTER_ADDR, MASTER_PORT not set: start multi-process",
        ),
        (["--arch", "gan", "--fc-layers", "16"], {}, "parameters (about"),
        (["--device", "foo"], {}, "Invalid value for '--device': device must be auto, cpu,"),
    ],
)
def test_cli_refuses_options_it_could_not_train_with(
    tmp_path: pathlib.Path, args: list[str], env: dict[str, str | None], message: str
) -> None:
    from click.testing import CliRunner

    from ganserve.train.cli import main

    result = CliRunner().invoke(main, ["--out", str(tmp_path / "x.pt"), *args], env=env)
    assert result.exit_code in (1, 2) and isinstance(result.exception, SystemExit), result.output
    assert message in result.output
    assert not (tmp_path / "x.pt").exists()


def test_an_existing_out_whose_run_folder_holds_a_run_names_both_fixes(
    tmp_path: pathlib.Path,
) -> None:
    """--overwrite alone was advised, and then refused for the run folder beside --out."""
    from click.testing import CliRunner

    from ganserve.train.cli import main

    (tmp_path / "m.pt").write_bytes(b"an earlier run's checkpoint")
    (tmp_path / "m-run").mkdir()
    (tmp_path / "m-run" / "log.jsonl").write_text("{}\n")
    result = CliRunner().invoke(main, ["--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 1, result.output
    assert f"pass --overwrite and another --run-dir ({tmp_path / 'm-run'} holds its run)" in (
        result.output
    )


@pytest.mark.parametrize(
    "given",
    [["--resume", "old.pt"], ["--resume=old.pt"], []],
    ids=["resume-arg", "resume=arg", "no-resume"],
)
def test_the_resume_command_keeps_the_options_and_replaces_resume(given: list[str]) -> None:
    args = ["--out", "my run.pt", *given, "--width", "8"]
    assert resume_command(args, "r/ckpt_000010.pt") == (
        "gan-train --out 'my run.pt' --width 8 --resume r/ckpt_000010.pt"
    )


def default_stop_signals() -> None:
    """In the child: the stop signals at their default action, as in a terminal's session.
    Under `nohup` (a CI runner, say) SIGHUP comes ignored, and gan-train rightly keeps it so."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


@pytest.mark.parametrize(
    "stop", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "sigterm", "sighup"]
)
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_says_how_to_resume(
    tmp_path: pathlib.Path, stop: signal.Signals
) -> None:
    """SIGTERM (kill, timeout, docker stop, Kubernetes) ended a run at once with nothing said
    and up to --checkpoint-every steps lost; so did SIGHUP (exit 129), and its run folder
    then blocked a plain rerun."""
    out = tmp_path / "m.pt"
    command = [
        str(pathlib.Path(sys.executable).parent / "gan-train"),
        *("--out", str(out), "--steps", "100000", "--width", "8", "--image-size", "8"),
        *("--eval-per-class", "0", "--batch-size", "4", "--log-every", "10"),
    ]
    proc = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, preexec_fn=default_stop_signals
    )
    try:
        for line in proc.stderr:  # wait until it is training
            if "step 10/100000" in line:
                break
        proc.send_signal(stop)
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 128 + stop, rest
    finally:
        proc.kill()
    (error,) = [line for line in rest.splitlines() if line.startswith("Error:")]
    assert "Traceback" not in rest
    # The whole command, since --resume alone would not rebuild this run's --width 8 model.
    again = shlex.split(error.split("; continue with: ")[1])
    assert again[: len(command)] == ["gan-train", *command[1:]]
    assert again[len(command)] == "--resume"
    saved = pathlib.Path(again[-1])
    assert checkpoint.load(saved)["step"] >= 10


def test_a_terminal_that_closes_saves_a_checkpoint_and_exits_129(tmp_path: pathlib.Path) -> None:
    """The terminal hangs up (closed, or its ssh session dropped): SIGHUP comes twice (from
    the shell and from the kernel), and every write to the terminal fails from then on (EIO).
    The second SIGHUP must not stop the run before it saves; the progress bar and the message
    saying how to resume would end it with exit code 1, the bar's before the step was saved:
    once the terminal has hung up they go to /dev/null instead."""
    out = tmp_path / "m.pt"
    command = [
        str(pathlib.Path(sys.executable).parent / "gan-train"),
        *("--out", str(out), "--steps", "100000", "--width", "8", "--image-size", "8"),
        *("--eval-per-class", "0", "--batch-size", "4", "--log-every", "10"),
    ]
    master, terminal = pty.openpty()
    name = os.ttyname(terminal)

    def session_with_its_own_terminal() -> None:  # as a login shell or sshd sets up
        default_stop_signals()
        os.setsid()
        os.close(os.open(name, os.O_RDWR))  # the first terminal opened becomes the session's

    proc = subprocess.Popen(
        command,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        preexec_fn=session_with_its_own_terminal,
    )
    os.close(terminal)
    try:
        shown, deadline = b"", time.monotonic() + 60
        while b"step 10/100000" not in shown and time.monotonic() < deadline:
            if select.select([master], [], [], 1)[0]:
                shown += os.read(master, 4096)
        assert b"step 10/100000" in shown, shown.decode(errors="replace")
        assert b"] 1" in shown  # the progress bar was drawn: stderr is the terminal
        os.close(master)  # the terminal closes: SIGHUP from the kernel
        master = -1
        time.sleep(0.1)
        proc.send_signal(signal.SIGHUP)  # and from the shell, passing its own on to its jobs
        assert proc.wait(timeout=60) == 128 + signal.SIGHUP
    finally:
        proc.kill()
        if master >= 0:
            os.close(master)
    (saved,) = run_checkpoints(tmp_path / "m-run")
    assert checkpoint.load(saved)["step"] >= 10


@pytest.mark.slow
def test_rgb_64_dcgan_trains_from_an_image_folder_and_exports(tmp_path: pathlib.Path) -> None:
    """The second config: 64x64 RGB from a (tiny, synthetic) folder, end to end."""
    rng = np.random.default_rng(0)
    for cls in ("red", "blue"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 80, (48, 48, 3), dtype=np.uint8)
            pixels[..., 0 if cls == "red" else 2] += 150
            Image.fromarray(pixels).save(tmp_path / "data" / cls / f"{i}.png")
    bin_dir = pathlib.Path(sys.executable).parent
    ckpt = tmp_path / "rgb.pt"
    result = subprocess.run(
        [
            str(bin_dir / "gan-train"),
            "--out",
            str(ckpt),
            "--data",
            str(tmp_path / "data"),
            "--image-size",
            "64",
            "--width",
            "8",
            "--latent-dim",
            "32",
            "--steps",
            "4",
            "--batch-size",
            "4",
            "--diffaugment",
            "color,translation,cutout",
            "--log-every",
            "2",
            "--eval-per-class",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    exported = subprocess.run(
        [
            str(bin_dir / "export-gan"),
            str(ckpt),
            "--repository",
            str(tmp_path / "models"),
            "--name",
            "rgb",
            "--max-batch",
            "4",
            "--tensorrt",
            "off",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert exported.returncode == 0, exported.stderr
    meta = json.loads((tmp_path / "models" / "rgb" / "1" / "metadata.json").read_text())
    assert (meta["height"], meta["channels"], meta["class_names"]) == (64, 3, ["blue", "red"])


def test_cli_bad_data_is_one_line(tmp_path: pathlib.Path) -> None:
    result = subprocess.run(
        [
            str(pathlib.Path(sys.executable).parent / "gan-train"),
            "--out",
            str(tmp_path / "x.pt"),
            "--data",
            str(tmp_path / "absent"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no such folder or .npz file" in result.stderr


def test_progress_bar_draws_step_losses_and_time_left(capsys: pytest.CaptureFixture) -> None:
    from ganserve.train.cli import ProgressBar

    bar = ProgressBar()
    bar(5, 10, {"d_loss": 1.25, "g_loss": 0.5, "images_per_s": 900.0})
    bar.close()
    line = capsys.readouterr().err
    assert "[###############...............] 5/10" in line
    assert "d 1.250  g 0.500  900 img/s" in line and "min left" in line


def test_progress_bar_times_what_is_left_from_the_steps_this_run_did(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After --resume from step 3600 of 4000, 'time left' divided by 3601 steps, not the ones
    this run took, and read 0.0 min for a run with minutes to go."""
    from ganserve.train import cli

    clock = iter([0.0, 60.0, 120.0])  # start; 60 s after the first step; 120 s after the 11th
    monkeypatch.setattr(cli.time, "monotonic", lambda: next(clock))
    bar = cli.ProgressBar()
    bar(3601, 4000, {})
    bar(3611, 4000, {})  # 11 steps in 120 s: 389 more take 70.7 min
    bar.close()
    assert capsys.readouterr().err.rstrip().endswith("3611/4000  70.7 min left")


def test_progress_is_reported_every_step(tmp_path: pathlib.Path) -> None:
    seen: list[int] = []
    data, heldout = load_digits_split(32)
    config = TrainConfig(steps=4, batch_size=8, log_every=2, eval_per_class=0)
    train(
        GEN,
        config,
        data,
        heldout,
        tmp_path / "p.pt",
        progress=lambda step, steps, last: seen.append(step),
    )
    assert seen == [1, 2, 3, 4]


def gan_train(*args: str) -> Result:
    """gan-train in this process, as tiny as a run gets (8x8 digits, width 8, no evaluation
    unless asked)."""
    from ganserve.train.cli import main

    tiny = ["--steps", "1", "--width", "8", "--image-size", "8", "--batch-size", "4"]
    if "--eval-per-class" not in args:
        tiny += ["--eval-per-class", "0"]
    return CliRunner().invoke(main, [*tiny, *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--diffaugment", ",,"],
            "Invalid value for '--diffaugment': diffaugment policy ',,' has an empty name; use "
            "comma-separated names from color, translation, cutout",
        ),
        (["--diffaugment", "translation,,cutout"], "'translation,,cutout' has an empty name"),
    ],
)
def test_cli_refuses_empty_diffaugment_policy_names(
    tmp_path: pathlib.Path, args: list[str], message: str
) -> None:
    """',,' once trained without augmentation, silently."""
    refused_as_usage_before_writing(tmp_path, args, message)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--loss", "hinge", "--label-smoothing", "0.1"],
            "--label-smoothing smooths the real targets of --loss nonsaturating and "
            "least-squares; --loss hinge has none; drop --label-smoothing",
        ),
        (["--loss", "wgan-gp", "--label-smoothing", "0.1"], "--loss wgan-gp has none"),
        (
            ["--loss", "hinge", "--gp-weight", "5"],
            "--gp-weight weighs the gradient penalty of --loss wgan-gp, which --loss hinge does "
            "not add",
        ),
        (["--gp-weight", "0"], "which --loss nonsaturating does not add"),
        (["--style-mixing", "0.5"], "--style-mixing is for --arch stylegan, not --arch dcgan"),
        (["--arch", "gan", "--w-dim", "16"], "--w-dim is for --arch stylegan, not --arch gan"),
        (["--mapping-layers", "2"], "--mapping-layers is for --arch stylegan, not --arch dcgan"),
        (
            ["--arch", "stylegan", "--fc-layers", "2"],
            "--fc-layers is for --arch gan, not --arch stylegan; drop --fc-layers",
        ),
        (
            ["--unconditional", "--embed-dim", "8"],
            "--embed-dim sizes the label embedding, which --unconditional drops",
        ),
        (
            ["--unconditional", "--eval-per-class", "5"],
            "--eval-per-class sizes the in-loop class-accuracy check, which --unconditional "
            "models skip",
        ),
        (
            ["--data", "faces.npz", "--eval-per-class", "5"],
            "which only --data digits has (its classifier judges the samples), not --data "
            "faces.npz",
        ),
    ],
)
def test_cli_refuses_options_the_run_would_ignore(
    tmp_path: pathlib.Path, args: list[str], message: str
) -> None:
    refused_as_usage_before_writing(tmp_path, args, message)


def refused_as_usage_before_writing(tmp_path: pathlib.Path, args: list[str], message: str) -> None:
    """gan-train ARGS is a usage error (exit 2) saying ``message``, and writes nothing."""
    result = gan_train("--out", str(tmp_path / "x.pt"), *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ["--loss", "hinge", "--label-smoothing", "0"],  # the default, said out loud
        ["--loss", "least-squares", "--label-smoothing", "0.1"],
        ["--loss", "wgan-gp", "--gp-weight", "5", "--n-critic", "2"],
        ["--loss", "hinge", "--n-critic", "2", "--r1-gamma", "1"],  # every loss uses these
        ["--unconditional", "--eval-per-class", "0"],  # no check, as asked
    ],
)
def test_cli_accepts_the_same_options_where_they_apply(
    tmp_path: pathlib.Path, args: list[str]
) -> None:
    result = gan_train("--out", str(tmp_path / "x.pt"), *args)
    assert result.exit_code == 0, result.output


def test_cli_refuses_a_label_embedding_for_data_without_labels(tmp_path: pathlib.Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (10, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "plain.npz", images=images)
    result = gan_train("--out", str(tmp_path / "x.pt"), "--data", str(tmp_path / "plain.npz"))
    assert result.exit_code == 0, result.output  # unconditional, and no --embed-dim asked for
    result = gan_train(
        *("--out", str(tmp_path / "y.pt"), "--data", str(tmp_path / "plain.npz")),
        *("--embed-dim", "8"),
    )
    assert result.exit_code == 2
    assert "--embed-dim sizes the label embedding, but --data" in result.output
    assert "plain.npz has no class labels; drop --embed-dim" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resume", "absent.pt"], "absent.pt: no such checkpoint file"),
        (["--resume", "not-a-checkpoint.pt"], "not a checkpoint"),
        (["--arch", "gan", "--fc-layers", "16", "--width", "1024"], "parameters (about"),
    ],
)
def test_a_refused_run_leaves_no_folder_behind(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    """The run folder (and --out's folder) used to be made before these checks."""
    monkeypatch.chdir(tmp_path)
    pathlib.Path("not-a-checkpoint.pt").write_text("hello")
    result = gan_train("--out", "new/x.pt", *args)
    assert result.exit_code == 1 and message in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-checkpoint.pt"]


def test_an_out_that_is_the_data_file_is_a_usage_error_and_leaves_the_data(
    tmp_path: pathlib.Path,
) -> None:
    """With --overwrite the checkpoint replaced the .npz it was trained on."""
    images = np.random.default_rng(0).integers(0, 256, (10, 8, 8), dtype=np.uint8)
    data = tmp_path / "plain.npz"
    np.savez(data, images=images)
    before = data.read_bytes()
    result = gan_train("--out", str(data), "--data", str(data), "--overwrite")
    assert result.exit_code == 2, result.output
    assert (
        f"Invalid value for '--out': {data} is the --data file, which the checkpoint would "
        "replace; pick another --out"
    ) in " ".join(result.output.split())
    assert data.read_bytes() == before and list(tmp_path.iterdir()) == [data]


@pytest.mark.parametrize("given", [True, False], ids=["run-dir", "beside-out"])
def test_a_run_folder_inside_the_data_folder_is_a_usage_error(
    tmp_path: pathlib.Path, given: bool
) -> None:
    """Its sample grids (PNGs) became training images of a class named after the folder."""
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / cls / f"{i}.png")
    before = sorted(tmp_path.rglob("*"))
    data = tmp_path / "data"
    if given:
        args, run_dir, default = ["--out", str(tmp_path / "m.pt"), "--run-dir", str(data)], data, ""
    else:
        args, run_dir = ["--out", str(data / "m.pt")], data / "m-run"
        default = f" (beside --out {data / 'm.pt'} by default)"
    result = gan_train(*args, "--data", str(data))
    assert result.exit_code == 2, result.output
    assert (
        f"Invalid value for '--run-dir': the run folder {run_dir}{default} lies in the --data "
        f"folder {data}, whose images its sample grids would join; pick another --run-dir"
    ) in " ".join(result.output.split())
    assert sorted(tmp_path.rglob("*")) == before


def test_an_earlier_runs_checkpoint_is_overwritten_only_when_asked(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "x.pt"
    assert gan_train("--out", str(out)).exit_code == 0
    earlier = out.read_bytes()
    refused = gan_train("--out", str(out), "--run-dir", str(tmp_path / "other"))
    assert refused.exit_code == 1
    assert (
        f"--out {out} already exists: pick another --out, continue its run with --resume {out}, "
        "or pass --overwrite to replace it" in refused.output
    )
    assert out.read_bytes() == earlier and not (tmp_path / "other").exists()
    replaced = gan_train("--out", str(out), "--run-dir", str(tmp_path / "other"), "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert out.read_bytes() != earlier


def test_continuing_a_run_may_overwrite_its_checkpoint(tmp_path: pathlib.Path) -> None:
    """--resume from --out itself, or from its run folder (what Ctrl-C tells to resume from),
    continues the run that wrote --out: no --overwrite needed."""
    out = tmp_path / "x.pt"
    assert gan_train("--out", str(out)).exit_code == 0
    resumed = gan_train("--out", str(out), "--steps", "2", "--resume", str(out))
    assert resumed.exit_code == 0, resumed.output
    saved = tmp_path / "x-run" / "ckpt_000002.pt"
    resumed = gan_train("--out", str(out), "--steps", "3", "--resume", str(saved))
    assert resumed.exit_code == 0, resumed.output
    assert checkpoint.load(out)["step"] == 3


def test_metrics_record_the_step_they_were_measured_at(tmp_path: pathlib.Path) -> None:
    """A checkpoint's metrics are its last evaluation's, which can be older than the
    checkpoint: after Ctrl-C between evaluations, or in a run resumed with evaluation off."""
    calls = iter(range(1000))
    with pytest.raises(TrainingStopped):
        run(tmp_path, 12, stop_requested=lambda: next(calls) >= 6)  # evaluated at 5, stops at 7
    stopped = checkpoint.load(tmp_path / "run" / "ckpt_000007.pt")
    assert (stopped["step"], stopped["metrics_step"]) == (7, 5)
    assert "sample_class_accuracy" in stopped["metrics"]
    resumed = run(tmp_path, 12, resume=tmp_path / "run" / "ckpt_000007.pt", eval_per_class=0)
    assert (resumed["step"], resumed["metrics_step"]) == (12, 5)
    assert (
        resumed["metrics"]["sample_class_accuracy"] == stopped["metrics"]["sample_class_accuracy"]
    )
    evaluated = run(tmp_path, 12, name="evaluated")
    assert (evaluated["step"], evaluated["metrics_step"]) == (12, 12)


def test_cli_says_at_which_step_the_metrics_were_measured(tmp_path: pathlib.Path) -> None:
    result = gan_train("--out", str(tmp_path / "x.pt"))
    assert result.exit_code == 0 and ", not evaluated); run: " in result.output, result.output
    evaluated = ["--steps", "2", "--eval-per-class", "10", "--image-size", "32"]
    result = gan_train("--out", str(tmp_path / "y.pt"), *evaluated)
    assert result.exit_code == 0, result.output
    assert "'sample_class_accuracy': " in result.output
    assert ", evaluated at step 2); run: " in result.output


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lr_g", -1.0, "lr_g must be a finite number > 0"),
        ("lr_d", float("nan"), "lr_d must be a finite number > 0"),
        ("beta1", 1.5, r"beta1 must be in \[0, 1\)"),
        ("beta2", -3.0, r"beta2 must be in \[0, 1\)"),
    ],
)
def test_train_config_refuses_optimiser_settings_adam_cannot_use(
    field: str, value: float, message: str
) -> None:
    """Only the CLI checked them: TrainConfig took a negative learning rate."""
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})
