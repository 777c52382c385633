"""The training loop: alternate D and G steps, keep an EMA generator, evaluate, checkpoint.

One loop for every generator family (`ganserve.train.networks.Architecture`): the factory
builds G and D from the generator config; losses, regularisers, EMA, evaluation and the
checkpoint format are shared.

Resuming continues exactly: weights, optimiser states, EMA, step, loss history and both random
streams (torch's global one and the loop's batch generator) come back from the checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import math
import pathlib
import time
from collections.abc import Callable
from typing import Any

import torch

from ganserve.train import checkpoint
from ganserve.train.augment import diff_augment, parse_policy
from ganserve.train.config import TrainConfig, resolve_device
from ganserve.train.data import ImageDataset
from ganserve.train.losses import (
    Loss,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    r1_penalty,
)
from ganserve.train.metrics import DigitClassifier, evaluate
from ganserve.train.monitor import RunMonitor, check_outputs, checkpoint_step, run_checkpoints
from ganserve.train.networks import (
    Architecture,
    GeneratorConfig,
    create_discriminator,
    create_generator,
    discriminator_config_for,
)

LOGGER = logging.getLogger(__name__)
BEST_METRIC = "sample_class_accuracy"
# Settings a resumed run may change; anything else must match the checkpoint.
RESUMABLE_CHANGES = {
    "steps",
    "log_every",
    "sample_every",
    "checkpoint_every",
    "keep_last",
    "eval_per_class",
    "device",
    "precision",
}
# A dataset up to this size lives on the GPU; a larger one stays in pinned host memory and each
# batch is copied over.
DEVICE_DATA_BYTES = 2 * 1024**3


@dataclasses.dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (the process group is already initialised)."""

    rank: int
    world_size: int


def _ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        return DistributedDataParallel(module, device_ids=[device.index])
    return DistributedDataParallel(module)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.lerp_(p, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)  # BatchNorm statistics follow the live generator


RESUME_KEYS = (
    "generator",
    "discriminator",
    "optimizer_g",
    "optimizer_d",
    "rng",
    "history",
    "metrics",
    "training_config",
)


def _check_resume(ckpt: dict[str, Any], gen_config: GeneratorConfig, cfg: TrainConfig) -> None:
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise ValueError(
            f"--resume: the checkpoint lacks {', '.join(missing)} (written by an "
            "older gan-train, or stripped); it can be exported, not resumed"
        )
    rng = ckpt["rng"]
    if not isinstance(rng, dict) or not all(
        isinstance(rng.get(k), torch.Tensor) for k in ("torch", "batch")
    ):
        raise ValueError("--resume: the checkpoint's rng is not the random states gan-train saves")
    if not isinstance(ckpt["training_config"], dict):
        raise ValueError("--resume: the checkpoint's training_config is not a table of settings")
    # Through from_dict: fields added since the checkpoint was written take their defaults.
    saved_gen = GeneratorConfig.from_dict(ckpt["generator_config"]).to_dict()
    differ = [
        f"{k} {saved_gen[k]!r} (now {v!r})"
        for k, v in gen_config.to_dict().items()
        if saved_gen[k] != v
    ]
    if differ:
        raise ValueError(
            f"--resume: the checkpoint's generator differs from this run's: {', '.join(differ)}"
        )
    saved, now, defaults = ckpt["training_config"], cfg.to_dict(), TrainConfig().to_dict()
    changed = sorted(
        k for k in now if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != now[k]
    )
    if changed:
        raise ValueError(
            f"--resume: training settings differ from the checkpoint's: "
            f"{', '.join(changed)}; only {', '.join(sorted(RESUMABLE_CHANGES))} "
            "may change"
        )
    if ckpt["step"] >= cfg.steps:
        raise ValueError(
            f"--resume: the checkpoint is at step {ckpt['step']}; ask for more --steps than that"
        )


class TrainingStopped(ValueError):
    """Training ended early: it diverged or was interrupted; the message says what was kept
    and how to go on. ``resume``: the checkpoint to go on from, when there is one (gan-train
    turns it into the command that goes on)."""

    def __init__(self, message: str, resume: str | None = None) -> None:
        super().__init__(message)
        self.resume = resume


# Parameters of G and D together beyond which training is refused (~64 GB with Adam's states).
MAX_PARAMETERS = 4_000_000_000


def _check_resume_data(ckpt: dict[str, Any], data: ImageDataset) -> None:
    saved = ckpt.get("dataset") or {}
    fingerprint = saved.get("fingerprint")
    if fingerprint is not None and fingerprint != data.fingerprint():
        raise ValueError(
            f"--resume: the checkpoint was trained on {saved.get('name', '?')} "
            f"({fingerprint[:8]}), this run's data is {data.name} ({data.fingerprint()[:8]}); "
            "resume on the same data, or start a new run"
        )


def check_size(gen_config: GeneratorConfig) -> None:
    """Refuse networks too large to train here before allocating them (on the meta device)."""
    with torch.device("meta"):
        nets = (
            create_generator(gen_config),
            create_discriminator(discriminator_config_for(gen_config)),
        )
    count = sum(p.numel() for net in nets for p in net.parameters())
    if count > MAX_PARAMETERS:
        raise ValueError(
            f"G and D would have {count:,} parameters (about {count * 16 / 1e9:,.0f} GB to "
            "train with Adam); lower --width or --fc-layers"
        )


def _restore(
    ckpt: dict[str, Any],
    G: torch.nn.Module,
    G_ema: torch.nn.Module,
    D: torch.nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    batch_gen: torch.Generator,
) -> None:
    """Load a resumed run's weights, optimiser and random states, or say in one line which part
    of the checkpoint does not fit this run (torch's own errors list every tensor)."""
    parts = (
        ("generator", G.load_state_dict),
        ("generator_ema", G_ema.load_state_dict),
        ("discriminator", D.load_state_dict),
        ("optimizer_g", opt_g.load_state_dict),
        ("optimizer_d", opt_d.load_state_dict),
        ("rng torch", lambda state: torch.set_rng_state(state)),
        ("rng batch", batch_gen.set_state),
    )
    for name, load in parts:
        key, _, sub = name.partition(" ")
        state = ckpt[key][sub] if sub else ckpt[key]
        try:
            load(state)
        except (RuntimeError, TypeError, ValueError, KeyError, AttributeError) as exc:
            # torch's first line only says which module; the next names the first tensor.
            detail = " ".join(str(exc).split()) or type(exc).__name__
            if len(detail) > 240:
                detail = detail[:240] + "..."
            raise ValueError(
                f"--resume: the checkpoint's {name.replace(' ', '.')} does not fit this run's "
                f"model ({detail}); was it written by another gan-train, or edited?"
            ) from None


def _finite_losses(step: int, d_loss: torch.Tensor, g_loss: torch.Tensor, last: str) -> None:
    """Stop a run whose losses are no longer numbers: every later step and checkpoint would be
    NaN too, and a NaN generator is useless to export or evaluate."""
    values = {"d_loss": d_loss.item(), "g_loss": g_loss.item()}
    bad = [f"{k} {v}" for k, v in values.items() if not math.isfinite(v)]
    if bad:
        kept = f"the last checkpoint is {last}" if last else "no checkpoint was written"
        raise TrainingStopped(
            f"training diverged at step {step} ({', '.join(bad)}): {kept}; lower --lr-g and "
            "--lr-d, or check the data"
        )


def _is_builtin_digits(data: ImageDataset) -> bool:
    """The built-in digits (whose classifier judges samples), not a file that shares the
    name."""
    return data.builtin


def train(
    gen_config: GeneratorConfig,
    train_config: TrainConfig,
    data: ImageDataset,
    heldout: ImageDataset,
    out: pathlib.Path,
    *,
    run_dir: pathlib.Path | None = None,
    resume: pathlib.Path | None = None,
    distributed: Distributed | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Train, evaluate, write the checkpoint to ``out``; return the checkpoint dict.

    With ``distributed`` (torchrun), every process trains on its own batches and DDP averages
    the gradients; only rank 0 writes logs, samples and checkpoints. ``progress(step, steps,
    last_record)`` is called after every step on rank 0 (a terminal progress bar). When
    ``stop_requested()`` turns true (Ctrl-C), the step ends, a checkpoint is saved and
    TrainingStopped says how to resume; a run whose losses stop being finite raises it too.
    """
    rank, world = (distributed.rank, distributed.world_size) if distributed else (0, 1)
    lead = rank == 0
    cfg = train_config
    if gen_config.num_classes not in (0, len(data.class_names)):
        raise ValueError(
            f"--num-classes {gen_config.num_classes} does not match the data "
            f"({len(data.class_names)} classes)"
        )
    if gen_config.channels != data.images.shape[1]:
        raise ValueError(
            f"the data has {data.images.shape[1]} channel(s), the generator {gen_config.channels}"
        )
    stylegan = gen_config.family is Architecture.STYLEGAN
    if cfg.style_mixing and not stylegan:
        raise ValueError(
            f"--style-mixing is for --arch stylegan, not {gen_config.architecture}; leave it at 0"
        )
    policy = parse_policy(cfg.diffaugment, gen_config.channels)
    check_size(gen_config)
    device = resolve_device(cfg.device, rank)
    amp = cfg.precision == "bf16"
    if amp and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision bf16: {device} has no bfloat16 support; use fp32")
    ckpt = checkpoint.load(resume) if resume is not None else None
    if ckpt is not None:
        _check_resume(ckpt, gen_config, cfg)
        _check_resume_data(ckpt, data)
        if lead and run_dir is not None:
            later = [p.name for p in run_checkpoints(run_dir) if checkpoint_step(p) > ckpt["step"]]
            if later:
                # The rotation would delete this run's own checkpoints as the oldest.
                raise ValueError(
                    f"--resume: the run folder {run_dir} holds checkpoints past step "
                    f"{ckpt['step']} ({later[0]} .. {later[-1]}), from the line of training "
                    "this resume leaves; pick another --run-dir, or move them away"
                )
    # bfloat16 needs no loss scaling: its exponent range is float32's.
    autocast = functools.partial(
        torch.autocast, device_type=device.type, dtype=torch.bfloat16, enabled=amp
    )
    torch.manual_seed(cfg.seed)
    disc_config = discriminator_config_for(gen_config)
    G = create_generator(gen_config).to(device)
    D = create_discriminator(disc_config).to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    batch_gen = torch.Generator().manual_seed(cfg.seed + rank)  # each rank its own batches
    history: list[dict[str, float]] = []
    metrics: dict[str, float] = {}
    # The step `metrics` was measured at: the last evaluation's figures are carried forward to
    # later checkpoints (a Ctrl-C one, or every one of a run resumed with evaluation off).
    metrics_step: int | None = None
    start = 0
    if ckpt is not None:
        _restore(ckpt, G, G_ema, D, opt_g, opt_d, batch_gen)
        if world > 1:
            # Only rank 0's batch stream was saved: every rank would draw the same batches.
            # Each goes on from it with a stream of its own (exact resume is one process's).
            drawn = int(torch.randint(2**62, (1,), generator=batch_gen))
            batch_gen.manual_seed(drawn + rank)
        if device.type == "cuda" and "cuda" in ckpt["rng"]:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
        start, history, metrics = ckpt["step"], list(ckpt["history"]), dict(ckpt["metrics"])
        metrics_step = ckpt.get("metrics_step")  # None in checkpoints from before it was kept
    if lead:  # after every other check: a refused run leaves no folder behind
        check_outputs(out, run_dir, resume, ckpt["history"] if ckpt is not None else None)
    if ckpt is not None:
        LOGGER.info("resumed from %s at step %d", resume, start)

    conditional = gen_config.num_classes > 0
    classifier = (
        DigitClassifier(data)
        if lead and conditional and cfg.eval_per_class and _is_builtin_digits(data)
        else None
    )
    monitor = (
        RunMonitor(run_dir, keep_last=cfg.keep_last, metric=BEST_METRIC)
        if run_dir and lead
        else None
    )

    # DDP wrappers for the passes that train; G and D stay the modules that are saved.
    G_train, D_train = (_ddp(G, device), _ddp(D, device)) if world > 1 else (G, D)
    images, labels = data.images, data.labels
    if device.type == "cuda":
        if images.numel() * images.element_size() <= DEVICE_DATA_BYTES:
            images, labels = images.to(device), labels.to(device)
        else:
            images, labels = images.pin_memory(), labels.pin_memory()

    def on_device(x: torch.Tensor) -> torch.Tensor:
        return x.to(device, non_blocking=True)

    def payload(step: int) -> dict[str, Any]:
        seconds = round(earlier_s + time.monotonic() - started, 2)
        return {
            "generator_config": gen_config.to_dict(),
            "discriminator_config": dataclasses.asdict(disc_config),
            "training_config": cfg.to_dict(),
            "dataset": {
                "name": data.name,
                "fingerprint": data.fingerprint(),
                "size": len(data),
                "class_names": list(data.class_names),
            },
            "step": step,
            "metrics": {**metrics, "train_seconds": seconds},
            "metrics_step": metrics_step,
            "history": list(history),
            "generator": G.state_dict(),
            "generator_ema": G_ema.state_dict(),
            "discriminator": D.state_dict(),
            "optimizer_g": opt_g.state_dict(),
            "optimizer_d": opt_d.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "batch": batch_gen.get_state(),
                **({"cuda": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
            },
            "world_size": world,
            "torch_version": str(torch.__version__),
        }

    def augment(x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, policy, batch_gen) if policy else x

    def generate(net: torch.nn.Module, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """G(z, y); with style mixing on, a share of the samples take a second latent's style
        from a random layer on. Nothing extra is drawn when it is off."""
        if not cfg.style_mixing:
            return net(z, y)
        layers = G.style_layers
        z_mix = torch.randn(z.shape, generator=batch_gen)  # (B, latent_dim)
        cut = torch.randint(1, layers, (len(z),), generator=batch_gen)  # (B,) in 1..L-1
        mixed = torch.rand(len(z), generator=batch_gen) < cfg.style_mixing  # (B,)
        mix_layer = torch.where(mixed, cut, torch.full_like(cut, layers))  # L: no mixing
        return net(z, y, z_mix=on_device(z_mix), mix_layer=on_device(mix_layer))

    started, window_started, window_images = time.monotonic(), time.monotonic(), 0
    # Training time of the sessions before a resume: every checkpoint carries the total, so a
    # run resumed from any of them counts all of it (checkpoints from before that carry it only
    # in the last log record).
    earlier_s = float(
        metrics.pop("train_seconds", history[-1].get("seconds", 0.0) if history else 0.0)
    )
    last_saved = str(resume or "")
    for step in range(start + 1, cfg.steps + 1):
        for _ in range(cfg.n_critic):
            idx = torch.randint(len(data), (cfg.batch_size,), generator=batch_gen)
            idx = idx.to(images.device)
            real, real_y = on_device(images[idx]), on_device(labels[idx])  # (B, C, H, W), (B,)
            z = on_device(torch.randn(cfg.batch_size, gen_config.latent_dim, generator=batch_gen))
            fake_y = on_device(
                torch.randint(
                    max(gen_config.num_classes, 1), (cfg.batch_size,), generator=batch_gen
                )
            )
            real_y = real_y if conditional else None
            fake_y = fake_y if conditional else None
            with torch.no_grad(), autocast():  # D's step needs no gradient through G
                fake = generate(G, z, fake_y).float()
            real_aug, fake_aug = augment(real), augment(fake)
            # Real and fake in one pass: DDP wants one forward per backward.
            with autocast():
                logits = D_train(
                    torch.cat([real_aug, fake_aug]),
                    torch.cat([real_y, fake_y]) if conditional else None,
                ).float()  # losses and penalties in float32
            d_loss = discriminator_loss(
                cfg.loss,
                logits[: cfg.batch_size],
                logits[cfg.batch_size :],
                label_smoothing=cfg.label_smoothing,
            )
            # Penalties go through the bare module; their gradients land on the same
            # parameters, so DDP averages them with the rest.
            critic = functools.partial(D, label=real_y)
            penalties: dict[str, float] = {}
            if cfg.loss is Loss.WGAN_GP:
                gp = gradient_penalty(critic, real_aug, fake_aug)
                d_loss = d_loss + cfg.gp_weight * gp
                penalties["gp"] = gp.item()
            if cfg.r1_gamma:
                r1 = r1_penalty(critic, real_aug)
                d_loss = d_loss + 0.5 * cfg.r1_gamma * r1
                penalties["r1"] = r1.item()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            window_images += cfg.batch_size * world

        # Generator step: fresh latents through G (DDP) and the bare D, whose gradients the
        # next D step clears.
        z = on_device(torch.randn(cfg.batch_size, gen_config.latent_dim, generator=batch_gen))
        with autocast():
            fake = augment(generate(G_train, z, fake_y).float())
            g_loss = generator_loss(cfg.loss, D(fake, fake_y).float())
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        update_ema(G_ema, G, cfg.ema_decay)

        saving = step % cfg.checkpoint_every == 0 or step == cfg.steps
        if step % cfg.log_every == 0 or saving:
            _finite_losses(step, d_loss, g_loss, last_saved)
        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.monotonic()
            record = {
                "step": step,
                "d_loss": d_loss.item(),
                "g_loss": g_loss.item(),
                **penalties,
                "images_per_s": round(window_images / (now - window_started), 1),
                "seconds": round(earlier_s + now - started, 2),
            }
            window_started, window_images = now, 0
            history.append(record)
            LOGGER.log(
                logging.INFO if lead else logging.DEBUG,
                "step %d/%d  d_loss %.4f  g_loss %.4f  %.0f img/s",
                step,
                cfg.steps,
                record["d_loss"],
                record["g_loss"],
                record["images_per_s"],
            )
            if monitor:
                monitor.log(record)
        if progress and lead:
            progress(step, cfg.steps, history[-1] if history else {})
        if monitor and (step % cfg.sample_every == 0 or step == cfg.steps):
            monitor.sample_grid(G_ema, step)
            monitor.loss_curve(history)
        if classifier and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            metrics.update(evaluate(G_ema, classifier, heldout, per_class=cfg.eval_per_class))
            metrics_step = step
            LOGGER.info("step %d evaluation: %s", step, metrics)
        if monitor and saving:
            last_saved = str(monitor.save(payload(step), step))
        if stop_requested and step < cfg.steps and stop_requested():
            _finite_losses(step, d_loss, g_loss, last_saved)  # no NaN checkpoint to resume
            saved: pathlib.Path | str = ""
            if lead:
                saved = monitor.save(payload(step), step) if monitor else out
                if not monitor:
                    checkpoint.save(payload(step), out)
            raise TrainingStopped(
                f"interrupted after step {step} of {cfg.steps}: saved {saved}", resume=str(saved)
            )

    final = payload(cfg.steps)
    if lead:
        checkpoint.save(final, out)
        LOGGER.info("wrote %s", out)
    if monitor:
        monitor.close()
    if world > 1:
        torch.distributed.barrier()  # the checkpoint exists before any rank returns
    return final
