"""The training loop shared by every recipe.

Methods plug in as *tasks* (train/tasks.py): `task.features(model, inputs)` returns per-sample tensors and
`task.loss(features, step, total_steps)` turns them into losses. Keeping the two apart is what makes
feature-caching accumulation (open_clip `--accum-freq`) correct for contrastive losses: micro-batches are first
encoded without gradients, then each is re-encoded with gradients and contrasted against all cached features.

Run folder layout:
  config.yaml           the resolved config (a different run in the folder is refused)
  log.jsonl             one JSON object per logged step and per validation
  checkpoints/step_N/   model.safetensors, optimizer.pt, state.json (step, epoch, batch position, RNG)
  latest.json           points at the newest complete checkpoint (written last, atomically); its position (step,
                        epoch, batch) and best validation metric so far
  best.safetensors      best validation model (validation split only, never test)
  model.safetensors     final weights
  run_summary.json      steps, time, throughput, final metrics, bad samples
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import yaml
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from affectclip.core.distributed import (
    DistInfo,
    all_ranks_have_samples,
    cleanup,
    device_and_rank,
    gather_lists,
    seed_everything,
)
from affectclip.core.errors import RunError
from affectclip.core.io import atomic_write_text
from affectclip.train.config import ConfigError, TrainConfig, diff_keys, require_set

PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingError(RunError):
    """Training cannot continue (NaN loss, no data); the message names the step and samples involved."""


# ----------------------------------------------------------------------------------------------- sampling


class EpochSampler(Sampler[int]):
    """Seeded per-epoch permutation, split evenly across ranks, able to skip the batches a resumed run has seen.

    Each rank gets the same number of indices (the tail that does not divide evenly is dropped, never padded with
    duplicates) so collective ops stay in step.
    """

    def __init__(self, n: int, batch_size: int, seed: int, info: DistInfo, shuffle: bool = True,
                 weights: torch.Tensor | None = None) -> None:
        self.n, self.batch_size, self.seed, self.info, self.shuffle = n, batch_size, seed, info, shuffle
        self.weights = weights  # per-sample draw probabilities: an epoch of n draws with replacement
        self.epoch, self.skip_batches = 0, 0
        self.per_rank = n // info.world_size

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def batches_per_epoch(self) -> int:
        return self.per_rank // self.batch_size

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        elif self.shuffle:
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        mine = order[self.info.rank :: self.info.world_size][: self.per_rank]
        usable = self.batches_per_epoch() * self.batch_size
        return iter(mine[self.skip_batches * self.batch_size : usable].tolist())

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() * self.batch_size - self.skip_batches * self.batch_size)


def class_balance_weights(labels: list[int], alpha: float) -> torch.Tensor:
    """Per-sample draw weights ∝ (size of the sample's class) ** -alpha.

    alpha 0 = natural frequencies, 0.5 = square-root balancing, 1 = every class drawn equally often. Rare classes
    (FER+ contempt and disgust are < 1 % of the faces) otherwise barely shape the embedding, which is what UAR
    measures. Unlabelled samples (-1) form one group of their own.
    """
    y = torch.as_tensor(labels)
    _, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    return counts[inverse].double().pow(-alpha)


# ----------------------------------------------------------------------------------------------- optimiser


def _is_gain_or_bias(name: str, p: torch.Tensor) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return p.ndim < 2 or "bias" in leaf or any(part.startswith(("ln", "bn", "norm")) for part in name.split("."))


def param_groups(model: nn.Module, task: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Optimiser groups: gains/biases, weights, new heads (temporal head + loss parameters), logit scale.

    Mirrors EmotionCLIP's grouping (methods.md §2.6): gains and biases never get weight decay; every group's learning
    rate is configurable (`optim.lr_gain_bias`, `lr_weights`, `lr_head`, `lr_logit_scale`, default `optim.lr`).
    `optim.lr_text` gives a tuned pretrained text body (MiniLM, `text.bert.`) its own rate: a BERT collapses at the
    rates that suit new projections.
    """
    o = cfg.optim

    def lr(*choices: float | None) -> float:  # first explicitly set value (0.0 counts as set: a frozen group)
        return next(c for c in (*choices, o.lr) if c is not None)

    groups: dict[str, dict[str, Any]] = {
        "gain_bias": {"params": [], "lr": lr(o.lr_gain_bias), "weight_decay": 0.0},
        "weights": {"params": [], "lr": lr(o.lr_weights), "weight_decay": o.weight_decay},
        "head_gain_bias": {"params": [], "lr": lr(o.lr_gain_bias, o.lr_head), "weight_decay": 0.0},
        "head_weights": {"params": [], "lr": lr(o.lr_head), "weight_decay": o.weight_decay},
        "logit_scale": {"params": [], "lr": lr(o.lr_logit_scale), "weight_decay": 0.0},
        "text_gain_bias": {"params": [], "lr": lr(o.lr_text, o.lr_gain_bias), "weight_decay": 0.0},
        "text_weights": {"params": [], "lr": lr(o.lr_text, o.lr_weights), "weight_decay": o.weight_decay},
    }
    named = [(n, p) for n, p in model.named_parameters()] + [(f"loss.{n}", p) for n, p in task.named_parameters()]
    for name, p in named:
        if not p.requires_grad:
            continue
        if name.endswith("logit_scale") or name.endswith("_scale"):
            key = "logit_scale"
        elif name.startswith(("temporal.", "loss.")):
            key = "head_gain_bias" if _is_gain_or_bias(name, p) else "head_weights"
        elif name.startswith("text.bert."):
            key = "text_gain_bias" if _is_gain_or_bias(name, p) else "text_weights"
        else:
            key = "gain_bias" if _is_gain_or_bias(name, p) else "weights"
        groups[key]["params"].append(p)
    out = []
    for key, g in groups.items():
        if g["params"]:
            g["name"], g["base_lr"] = key, g["lr"]
            out.append(g)
    if not out:
        raise ConfigError("nothing to train: every parameter is frozen (check model.freeze_image / freeze_text)")
    return out


def build_optimizer(groups: list[dict[str, Any]], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "adamw":
        fused = o.fused if o.fused is not None else device.type in ("cuda", "cpu")
        return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
                                 fused=fused or None)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    raise ConfigError(f"optim.name '{o.name}' is unknown; use adamw or sgd")


def lr_multiplier(step: int, total_steps: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Warm-up from 0, then cosine to 0 / constant / multi-step decay at epoch milestones."""
    o = cfg.optim
    if o.warmup_steps and step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "cosine":
        span = max(1, total_steps - o.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - o.warmup_steps) / span)))
    if o.schedule == "constant":
        return 1.0
    if o.schedule == "multistep":
        epoch = step // max(1, steps_per_epoch)
        return o.gamma ** sum(epoch >= m for m in o.milestones)
    raise ConfigError(f"optim.schedule '{o.schedule}' is unknown; use cosine, constant or multistep")


# ----------------------------------------------------------------------------------------------- run folder


def prepare_output_dir(out: Path, cfg: TrainConfig, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: an existing run folder needs --resume (same config) or --overwrite.

    The one change --resume accepts is a larger `run.epochs`, to extend a run: the learning-rate schedule is then
    recomputed for the new length from the current step on (as open_clip does), so the result is not the run that
    N epochs from scratch would give; config.yaml records the new length."""
    existing = out / "config.yaml"
    current = yaml.safe_load(yaml.safe_dump(cfg.to_dict(), sort_keys=False))  # compare as YAML sees it
    if existing.exists():
        if overwrite:
            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        elif resume:
            old = yaml.safe_load(existing.read_text())
            diff = sorted(diff_keys(old, current))
            if diff == ["run.epochs"] and current["run"]["epochs"] > old["run"]["epochs"]:
                print(f"note: extending the run in {out} from {old['run']['epochs']} to {current['run']['epochs']} "
                      "epochs; the learning-rate schedule is recomputed for the new length from the current step")
                atomic_write_text(existing, yaml.safe_dump(current, sort_keys=False))
            elif diff == ["run.epochs"]:
                raise ConfigError(f"{out} holds a run of {old['run']['epochs']} epochs; --resume can extend it "
                                  f"(a larger run.epochs) but not shorten it to {current['run']['epochs']}")
            elif diff:
                raise ConfigError(f"{out} holds a run with a different config (differs at: {', '.join(diff[:8])}); "
                                  "use another --output or --overwrite (only run.epochs may grow on --resume)")
            return
        else:
            raise ConfigError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} is not empty and holds no affectclip run; choose an empty or new --output folder")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(current, sort_keys=False))


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(out: Path, model: nn.Module, task: nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler | None, position: dict[str, Any], keep_last: int) -> Path:
    """Write a complete checkpoint folder, then point latest.json at it (so a crash never leaves a half state)."""
    from affectclip.models.checkpoint import save_checkpoint

    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise TrainingError(f"parameter {name} holds NaN/inf at step {position['step']}; not writing a checkpoint")
    ckpt = out / "checkpoints" / f"step_{position['step']:08d}"
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_checkpoint(model, tmp / "model.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "task": task.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "rng": _rng_state()},
               tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(position))
    shutil.rmtree(ckpt, ignore_errors=True)
    os.replace(tmp, ckpt)
    atomic_write_text(out / "latest.json", json.dumps({**position, "dir": str(ckpt.relative_to(out))}))
    for old in sorted((out / "checkpoints").glob("step_*"))[:-keep_last] if keep_last > 0 else []:
        if old.suffix != ".tmp":
            shutil.rmtree(old, ignore_errors=True)
    return ckpt


def load_training_state(out: Path, model: nn.Module, task: nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler | None) -> dict[str, int]:
    from affectclip.models.checkpoint import load_state_dict, load_weights

    latest = json.loads((out / "latest.json").read_text())
    ckpt = out / latest["dir"]
    load_weights(model, load_state_dict(ckpt / "model.safetensors"), str(ckpt))
    # weights_only=False is limited to our own optimizer file (RNG states are numpy/python objects).
    state = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    task.load_state_dict(state["task"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"])
    best = latest.get("best")
    return {**{k: int(latest[k]) for k in ("step", "epoch", "batch")}, "best": -math.inf if best is None else best}


def _finite(value: float) -> float | None:
    """JSON has no infinity: 'no best model yet' is stored as null."""
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------------------------------------- the loop


class _TaskForward(nn.Module):
    """model + task behind one forward(), so DistributedDataParallel sees the whole graph."""

    def __init__(self, model: nn.Module, task: nn.Module) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return self.task.features(self.model, inputs)


def _concat_features(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key in parts[0]:
        vals = [p[key] for p in parts]
        if isinstance(vals[0], torch.Tensor) and vals[0].ndim > 0:
            out[key] = torch.cat(vals, 0)
        elif isinstance(vals[0], list):
            out[key] = [v for vs in vals for v in vs]
        else:
            out[key] = vals[0]
    return out


class _Logger:
    def __init__(self, out: Path | None, tensorboard: bool) -> None:
        self.file = open(out / "log.jsonl", "a") if out else None  # noqa: SIM115 - closed in close()
        self.tb = None
        if out and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ConfigError("run.tensorboard=true needs the tensorboard package (pip install tensorboard)") from exc
            self.tb = SummaryWriter(str(out / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.tb:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb:
            self.tb.close()


PREFETCH_FACTOR = 2  # batches each DataLoader worker prepares ahead (PyTorch's default)


def build_loader(train_ds: Dataset, sampler: Any, cfg: TrainConfig, info: DistInfo, device: torch.device) -> DataLoader:
    """The training DataLoader. It owns its generator, seeded by run seed + rank: creating an iterator must not
    consume the global RNG (or a resumed run's augmentation would drift from the uninterrupted run's), and
    DataLoader workers of different ranks must draw different augmentations. CPU training with workers hands batches
    over through reused shared memory (`data.shared_batches`): read them through a `SharedBatchReader` (unpack each
    batch, release it once nothing reads its tensors any more)."""
    from affectclip.data.shared_batches import SharedBatchCollate
    from affectclip.train.data import make_collate

    collate = make_collate()
    workers = cfg.data.num_workers
    if workers and cfg.data.shared_batches and device.type == "cpu":
        # enough slots for the batches a worker prepares ahead, those an accumulating step holds, and one spare
        collate = SharedBatchCollate(collate, slots=PREFETCH_FACTOR + cfg.run.accum_freq + 1)
    return DataLoader(train_ds, batch_size=cfg.data.batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate, drop_last=True, pin_memory=device.type == "cuda",
                      prefetch_factor=PREFETCH_FACTOR if workers else None,
                      generator=torch.Generator().manual_seed(cfg.run.seed + info.rank))


def train(cfg: TrainConfig, output_dir: str | os.PathLike | None, resume: bool = False,
          overwrite: bool = False) -> dict[str, Any]:
    """Run a training config; returns the run summary (also written to run_summary.json)."""
    from affectclip.data.shared_batches import SharedBatchReader
    from affectclip.models.factory import create_model, get_tokenizer
    from affectclip.train.data import build_datasets
    from affectclip.train.tasks import CachedTokenizer, build_task

    require_set(cfg)
    device, info = device_and_rank(cfg.run.device, "run.device")
    if cfg.run.precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"run.precision '{cfg.run.precision}' is unknown; use fp32, bf16 or fp16")
    out = Path(output_dir) if output_dir else None
    if out is not None and info.is_main:
        prepare_output_dir(out, cfg, resume, overwrite)
    seed_everything(cfg.run.seed)  # the same initial weights on every rank (a frozen tower is never broadcast
    # before the feature-cache check in build_datasets compares its weights with the cache's)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    model = create_model(cfg.model.name, pretrained=cfg.model.pretrained, **cfg.model.overrides)
    if cfg.model.reset_logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(cfg.model.reset_logit_scale)
    if cfg.model.freeze_image:
        model.visual.requires_grad_(False)
    if cfg.model.freeze_text:
        model.text.requires_grad_(False)
    if cfg.run.grad_checkpointing:
        for tower in (model.visual, model.text):
            if hasattr(tower, "set_grad_checkpointing"):
                tower.set_grad_checkpointing(True)
    model.to(device)
    if cfg.run.channels_last:
        model.to(memory_format=torch.channels_last)
    tokenizer = CachedTokenizer(get_tokenizer(model))  # captions repeat: tokenise each distinct one once
    if info.rank:  # other ranks draw their own data order and augmentation from here on
        seed_everything(cfg.run.seed + info.rank)
    train_ds, val_ds, classes = build_datasets(cfg, model)
    task = build_task(cfg, model, tokenizer, info).to(device)

    if isinstance(train_ds, IterableDataset):  # shards: the dataset splits itself by rank and worker
        sampler = None
        epoch_source: Any = train_ds
        batches_per_epoch = train_ds.plan(cfg.data.batch_size, cfg.data.num_workers, info.rank, info.world_size)
        size = f"{sum(train_ds.counts)} samples in {len(train_ds.shards)} shard(s)"
    else:
        weights = None
        if cfg.data.class_balance:
            if getattr(train_ds, "labels", None) is None:
                raise ConfigError("data.class_balance needs a labelled training set (a manifest with `label`)")
            weights = class_balance_weights(train_ds.labels, cfg.data.class_balance)
        sampler = epoch_source = EpochSampler(len(train_ds), cfg.data.batch_size, cfg.run.seed, info, weights=weights)
        batches_per_epoch = sampler.batches_per_epoch()
        size = f"{len(train_ds)} samples"
    steps_per_epoch = batches_per_epoch // cfg.run.accum_freq
    if steps_per_epoch == 0:
        raise TrainingError(f"the training set has {size}: fewer than one batch of {cfg.data.batch_size} x accum "
                            f"{cfg.run.accum_freq} for some rank{' or DataLoader worker' * (sampler is None)}; lower "
                            "data.batch_size" + (", write more shards or set data.shards.resampled=true"
                                                 if sampler is None else ""))
    total_steps = steps_per_epoch * cfg.run.epochs
    if cfg.run.max_steps:
        total_steps = min(total_steps, cfg.run.max_steps)
    loader = build_loader(train_ds, sampler, cfg, info, device)

    groups = param_groups(model, task, cfg)
    optimizer = build_optimizer(groups, cfg, device)
    scaler = torch.amp.GradScaler(device.type) if cfg.run.precision == "fp16" else None
    fwd: nn.Module = _TaskForward(model, task)
    if info.enabled:
        fwd = nn.parallel.DistributedDataParallel(fwd, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.run.compile:
        fwd = torch.compile(fwd)
    autocast = (torch.autocast(device.type, dtype=PRECISION_DTYPES[cfg.run.precision])
                if cfg.run.precision in PRECISION_DTYPES else contextlib.nullcontext())

    position = {"step": 0, "epoch": 0, "batch": 0}
    if resume and out is not None and (out / "latest.json").exists():
        position = load_training_state(out, model, task, optimizer, scaler)
    logger = _Logger(out if info.is_main else None, cfg.run.tensorboard)
    errors: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    val_results: list[dict[str, Any]] = []
    best = position.get("best", -math.inf)  # a resumed run only replaces best.safetensors with a better model
    step, t_start, samples_seen = position["step"], time.time(), 0
    start_step = step  # > 0 for a resumed run: this invocation trains steps start_step + 1 .. the last
    progress = _progress(cfg, info, total_steps, step)
    reader = SharedBatchReader()

    try:
        for epoch in range(position["epoch"], cfg.run.epochs):
            if step >= total_steps:
                break
            skip = position["batch"] if epoch == position["epoch"] else 0
            epoch_source.set_epoch(epoch, skip_batches=skip)
            if sampler is not None and hasattr(train_ds, "set_epoch"):
                train_ds.set_epoch(epoch)  # per-epoch random video windows (seeded by epoch and sample)
            batch_index = skip
            micro: list[dict[str, Any]] = []
            held: list[dict[str, Any]] = []  # batches whose tensors the step still reads (shared worker memory)
            t_data = time.time()
            # islice: streamed shards can hold more than the planned epoch on some ranks
            for batch in itertools.islice(loader, max(0, steps_per_epoch * cfg.run.accum_freq - skip)):
                batch = reader.unpack(batch)
                errors.extend(batch.pop("errors", []))
                batch_index += 1
                if not all_ranks_have_samples("index" in batch, info, device):  # every sample failed on some rank:
                    reader.release(batch)
                    continue  # all ranks skip it together (a rank that stepped alone would wait in its collectives)
                micro.append(task.prepare(batch, device))
                held.append(batch)
                if len(micro) < cfg.run.accum_freq:
                    continue
                data_time = time.time() - t_data
                lr_mult = lr_multiplier(step, total_steps, steps_per_epoch, cfg)
                for g in optimizer.param_groups:
                    g["lr"] = g["base_lr"] * lr_mult
                losses = _optimizer_step(fwd, task, micro, optimizer, scaler, autocast, cfg, step, total_steps, model)
                model.clamp_logit_scale()
                task.after_step(model, step)
                n = sum(len(m["index"]) for m in micro) * info.world_size
                samples_seen += n
                micro = []
                for b in held:
                    reader.release(b)
                held = []
                step += 1
                batch_time = time.time() - t_data
                record = {"step": step, "epoch": epoch, **losses, "lr": optimizer.param_groups[0]["lr"],
                          "logit_scale": float(model.logit_scale.detach().exp()), "samples_per_s": n / max(batch_time, 1e-9),
                          "data_time": data_time, "batch_time": batch_time}
                history.append(record)
                if step % cfg.run.log_every == 0 or step == total_steps:
                    logger.log(record)
                if progress:
                    progress.update(step, record)
                if out is not None and info.is_main and cfg.run.save_every_steps and step % cfg.run.save_every_steps == 0:
                    save_training_state(out, model, task, optimizer, scaler,
                                        {"step": step, "epoch": epoch, "batch": batch_index, "best": _finite(best)},
                                        cfg.run.keep_last)
                t_data = time.time()
                if step >= total_steps:
                    break
            for b in held:  # an accumulation left incomplete at the epoch's end
                reader.release(b)
            reader.reset()  # this epoch's workers are gone; the next epoch's bring their own buffers
            position["batch"] = 0
            last_epoch = epoch + 1 == cfg.run.epochs or step >= total_steps
            if val_ds is not None and ((epoch + 1) % cfg.run.eval_every_epochs == 0 or last_epoch):
                # every rank validates: extraction splits the split across ranks and gathers it (a collective, so
                # a rank that skipped it would leave the others waiting); all ranks get the same metrics
                res = validate(model, tokenizer, val_ds, classes, cfg, device)
                res.update(step=step, epoch=epoch + 1)
                val_results.append(res)
                logger.log({"step": step, **{f"val_{k}": v for k, v in res.items() if isinstance(v, (int, float))}})
                metric = res.get(cfg.run.best_metric or "", None)
                if metric is not None and metric > best:
                    best = metric
                    if out is not None and info.is_main:
                        from affectclip.models.checkpoint import save_checkpoint

                        save_checkpoint(model, out / "best.safetensors", {"step": step, cfg.run.best_metric: metric})
            if out is not None and info.is_main:
                save_training_state(out, model, task, optimizer, scaler,
                                    {"step": step, "epoch": epoch + 1, "batch": 0, "best": _finite(best)},
                                    cfg.run.keep_last)
    finally:
        if progress:
            progress.close()
        logger.close()

    errors = gather_lists(errors, info)  # each rank read its own share of the data; rank 0 reports them all
    bad: dict[tuple[Any, Any], dict[str, Any]] = {}  # one entry per unreadable sample, however often it was drawn
    for e in errors:
        bad.setdefault((e.get("path"), e.get("index")), {**e, "reads": 0})["reads"] += 1
    summary = {
        "method": cfg.method, "steps": step, "start_step": start_step, "epochs": cfg.run.epochs,
        "world_size": info.world_size,
        "device": str(device), "seconds": time.time() - t_start,
        "samples_per_s": samples_seen / max(time.time() - t_start, 1e-9),
        "final": {k: v for k, v in history[-1].items()} if history else {},
        "validation": val_results, "bad_samples": len(bad), "bad_reads": len(errors),
        "bad_sample_list": list(bad.values())[:1000],
        "truncated_texts": int(getattr(tokenizer, "truncated", 0)),
    }
    if out is not None and info.is_main:
        from affectclip.models.checkpoint import save_checkpoint

        save_checkpoint(model, out / "model.safetensors")
        atomic_write_text(out / "run_summary.json", json.dumps(summary, indent=2, default=str))
    cleanup(info)
    summary["model"] = model
    return summary


def _optimizer_step(fwd, task, micro, optimizer, scaler, autocast, cfg: TrainConfig, step: int, total_steps: int,
                    model: nn.Module) -> dict[str, float]:
    """One optimiser step over `micro` (1 micro-batch, or feature-caching accumulation over several)."""
    optimizer.zero_grad(set_to_none=True)
    if len(micro) == 1:
        with autocast:
            feats = fwd(micro[0])
        out = task.loss(feats, step, total_steps)
        _check_finite(out, micro, step)
        _backward(out["loss"], scaler)
    else:
        with torch.no_grad(), autocast:
            cached = [fwd(m) for m in micro]
        for j, m in enumerate(micro):
            with autocast:
                fresh = fwd(m)
            out = task.loss(_concat_features(cached[:j] + [fresh] + cached[j + 1 :]), step, total_steps)
            _check_finite(out, micro, step)
            _backward(out["loss"], scaler)
    if cfg.optim.grad_clip:
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.optim.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in out.items()}


def _backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def _check_finite(out: dict[str, Any], micro: list[dict[str, Any]], step: int) -> None:
    loss = out["loss"]
    if not torch.isfinite(loss):
        ids = [i for m in micro for i in m.get("ids", m["index"])][:20]
        terms = {k: float(v.detach()) for k, v in out.items() if isinstance(v, torch.Tensor) and v.ndim == 0}
        raise TrainingError(f"loss is {float(loss.detach())} at step {step + 1} (terms {terms}); batch samples {ids}. "
                            "No checkpoint was written for this step; the last good checkpoint is intact. "
                            "Lower optim.lr, use run.precision=fp32 or bf16, or check these samples.")


@torch.no_grad()
def validate(model: nn.Module, tokenizer, val_ds, classes: list[str], cfg: TrainConfig,
             device: torch.device) -> dict[str, Any]:
    """Zero-shot classification of the labelled validation split with the recipe's prompts, through the same
    protocol object as `affectclip eval run` (so both give the same numbers on the same model and data)."""
    from affectclip.eval.protocol import ZeroShotProtocol

    cached = val_ds.feature_set(model, device) if hasattr(val_ds, "feature_set") else None  # features:DIR cache
    protocol = ZeroShotProtocol(prompts=cfg.eval.prompts, agg=cfg.eval.agg)
    res = protocol.evaluate(model, tokenizer, classes, dataset=val_ds if cached is None else None, features=cached,
                            batch_size=cfg.data.batch_size, device=str(device))
    keep = ("war", "uar", "n_samples", "n_failures", "per_class_recall", "confusion_matrix")
    return {k: v for k, v in res["metrics"].items() if k in keep}


class _RichProgress:
    def __init__(self, total: int, start: int) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False)
        self.task = self.bar.add_task("train", total=total, completed=start, info="")
        self.bar.start()

    def update(self, step: int, record: dict[str, Any]) -> None:
        info = f"loss {record['loss']:.3f}  lr {record['lr']:.2e}  {record['samples_per_s']:.0f} samples/s"
        self.bar.update(self.task, completed=step, info=info)

    def close(self) -> None:
        self.bar.stop()


def _progress(cfg: TrainConfig, info: DistInfo, total: int, start: int) -> _RichProgress | None:
    return _RichProgress(total, start) if cfg.run.progress and info.is_main else None
