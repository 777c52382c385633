"""What a training run leaves for people to follow: a JSONL log, sample grids, a loss curve,
and rotating checkpoints (the last K, plus the best by the evaluation metric); and the checks,
before training, that it can be written there (and that no output names an input).

    <run_dir>/log.jsonl                one JSON object per logged step
    <run_dir>/samples/step_XXXXXX.png  fixed seeds, one row per class, from the EMA generator
    <run_dir>/losses.png               D and G loss against step
    <run_dir>/ckpt_XXXXXX.pt           the last `keep_last` checkpoints
    <run_dir>/best.pt                  the best checkpoint by `metric`
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from typing import Any

import numpy as np
import torch
from PIL import Image

from ganserve.serve.imaging import to_uint8
from ganserve.train import checkpoint
from ganserve.train.sampling import generate, grid_seeds

GRID_COLUMNS = 10


class RunMonitor:
    """Writes the run's log, pictures and checkpoints under ``run_dir``."""

    def __init__(self, run_dir: pathlib.Path, *, keep_last: int, metric: str) -> None:
        self.run_dir = run_dir
        self.keep_last = keep_last
        self.metric = metric
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        self._log = (run_dir / "log.jsonl").open("a")
        self.best = -float("inf")
        best = run_dir / "best.pt"
        if best.is_file():  # a resumed run keeps its best so far
            self.best = checkpoint.load(best).get("metrics", {}).get(metric, -float("inf"))

    def log(self, record: dict[str, Any]) -> None:
        self._log.write(json.dumps(record) + "\n")
        self._log.flush()

    @torch.no_grad()
    def sample_grid(self, generator: torch.nn.Module, step: int) -> pathlib.Path:
        """Seeds 0..9 (columns) for every class (rows), through the serving seed->latent map."""
        images = generate(generator, *grid_seeds(generator.config.num_classes, GRID_COLUMNS))
        path = self.run_dir / "samples" / f"step_{step:06d}.png"
        tile_grid(images.numpy(), GRID_COLUMNS).save(path)
        return path

    def loss_curve(self, history: list[dict[str, float]]) -> pathlib.Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = self.run_dir / "losses.png"
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        steps = [h["step"] for h in history]
        for key in ("d_loss", "g_loss"):
            ax.plot(steps, [h[key] for h in history], label=key)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path

    def save(self, payload: dict[str, Any], step: int) -> pathlib.Path:
        """Write ckpt_<step>.pt, keep the last K, and copy to best.pt when the metric improves."""
        path = self.run_dir / f"ckpt_{step:06d}.pt"
        checkpoint.save(payload, path)
        for old in run_checkpoints(self.run_dir)[: -self.keep_last]:
            old.unlink()
        value = payload.get("metrics", {}).get(self.metric)
        if value is not None and value > self.best:
            self.best = value
            checkpoint.save(payload, self.run_dir / "best.pt")
        return path

    def close(self) -> None:
        self._log.close()


def checkpoint_step(path: pathlib.Path) -> int | None:
    """The step of a ckpt_<step>.pt file, or None for another name."""
    step = path.stem.removeprefix("ckpt_")
    return int(step) if path.stem.startswith("ckpt_") and step.isdigit() else None


def run_checkpoints(run_dir: pathlib.Path) -> list[pathlib.Path]:
    """The run folder's ckpt_<step>.pt files, oldest step first (by number: ckpt_1000000.pt
    sorts before ckpt_999999.pt as text)."""
    found = [(checkpoint_step(p), p) for p in run_dir.glob("ckpt_*.pt")]
    return [p for step, p in sorted((s, p) for s, p in found if s is not None)]


def tile_grid(images: np.ndarray, columns: int) -> Image.Image:
    """(N, C, H, W) generator output in [-1, 1] -> one picture, row-major, 1-pixel white
    borders, through the serving post-processing."""
    tiles = to_uint8(images)  # (N, H, W, C)
    rows = -(-len(tiles) // columns)
    h, w, c = tiles.shape[1:]
    grid = np.full((rows * (h + 2), columns * (w + 2), c), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, col = divmod(i, columns)
        top, left = r * (h + 2) + 1, col * (w + 2) + 1
        grid[top : top + h, left : left + w] = tile
    return Image.fromarray(grid[:, :, 0] if c == 1 else grid)


def same_file(a: pathlib.Path, b: pathlib.Path) -> bool:
    """Whether ``a`` and ``b`` name one file: through symbolic or hard links where both exist,
    by their resolved paths where one does not (yet). An output option that names an input
    would write over it."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one is absent (or unreadable): compare where they point
        return a.resolve() == b.resolve()


def check_outputs(
    out: pathlib.Path,
    run_dir: pathlib.Path | None,
    resume: pathlib.Path | None,
    history: list[dict[str, Any]] | None = None,
) -> None:
    """Refuse, before any training, outputs that could not be written, and a run folder that
    holds another run (whose checkpoints the rotation would mix with this one's). The folders
    made to try writing are removed again when it refuses, if still empty."""
    if run_dir is not None:
        if run_dir.resolve() == out.resolve() or out.resolve() in run_dir.resolve().parents:
            raise ValueError(f"the run folder {run_dir} cannot be --out {out} or inside it")
        previous = run_checkpoints(run_dir)
        # A resume goes on with the run in the folder only from one of its own checkpoints,
        # or from the --out that run wrote (its log begins as the checkpoint's history does);
        # from anywhere else, the rotation would delete the folder's run and its log would
        # mix the two.
        own = resume is not None and (
            resume.resolve().parent == run_dir.resolve()
            or (resume.resolve() == out.resolve() and _log_begins(run_dir, history or []))
        )
        if not own and (previous or (run_dir / "log.jsonl").exists()):
            go_on = f"continue it with --resume {previous[-1]}, or " if previous else ""
            other = f" other than the one {resume} comes from" if resume is not None else ""
            raise ValueError(
                f"the run folder {run_dir} already holds a run{other}; {go_on}pick another "
                "--run-dir (or delete the folder)"
            )
    made = _absent_folders(out.parent) + (_absent_folders(run_dir) if run_dir else [])
    try:
        _try_writing(out, run_dir)
    except ValueError:
        for folder in sorted(set(made), key=lambda p: len(p.parts), reverse=True):  # deepest first
            with contextlib.suppress(OSError):  # not empty, or not made after all
                folder.rmdir()
        raise


def _log_begins(run_dir: pathlib.Path, history: list[dict[str, Any]]) -> bool:
    """Whether the folder's log begins with the first record of ``history``: the folder holds
    the run that history belongs to (a folder without a log, or a history without records,
    cannot be told apart from another run's)."""
    try:
        with (run_dir / "log.jsonl").open() as f:
            first = json.loads(f.readline())
    except (OSError, ValueError):
        return False
    return bool(history) and first == history[0]


def _absent_folders(folder: pathlib.Path) -> list[pathlib.Path]:
    """``folder`` and those of its parents that do not exist yet."""
    absent = []
    for path in [folder, *folder.parents]:
        if os.path.lexists(path):
            break
        absent.append(path)
    return absent


def _try_writing(out: pathlib.Path, run_dir: pathlib.Path | None) -> None:
    """Make the folders of ``out`` and the run folder, and create a file in each."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.with_suffix(out.suffix + ".tmp")
        probe.touch()
        probe.unlink()
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"cannot write --out {out}: {out.parent} is not a folder") from None
    except OSError as exc:
        raise ValueError(f"cannot write --out {out}: {exc.strerror}") from None
    if run_dir is None:
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"cannot create the run folder {run_dir}: a file is in the way") from None
    except OSError as exc:
        raise ValueError(f"cannot create the run folder {run_dir}: {exc.strerror}") from None
    try:
        probe = run_dir / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"cannot write in the run folder {run_dir}: {exc.strerror}") from None
