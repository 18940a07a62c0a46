"""Training configuration: dataclasses filled from YAML recipes plus `key.path=value` overrides.

Configs are data. Every choice the method papers leave open is a field here with a documented default, and
unknown keys or wrongly typed values are rejected with the dotted key name and the allowed values, so a typo in a
recipe never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from affectclip.core.errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


MISSING = "???"  # a recipe value the user must give (OmegaConf's marker), e.g. stage 2's model.pretrained


@dataclass
class ModelConfig:
    name: str = "tiny-vit-wordpiece"  # registered config name or a checkpoint path
    pretrained: str | None = None  # weights to load into `name`
    overrides: dict[str, Any] = field(default_factory=dict)  # nested config patches, e.g. {vision_cfg: {subject_token: true}}
    freeze_image: bool = False
    freeze_text: bool = False
    reset_logit_scale: float | None = None  # e.g. 2.659 = ln(1/0.07); None keeps the checkpoint's


@dataclass
class DataConfig:
    train: str | None = "synthetic"  # "synthetic", a manifest path[:split], a shard folder or pattern (*.tar)
    val: str | None = "synthetic"  # labelled split for zero-shot validation; None disables it
    classes: list[str] | None = None  # label names in index order (default: the dataset's own)
    batch_size: int = 64
    # draw each epoch's samples with probability ∝ class size ** -class_balance (with replacement): 0 = plain
    # shuffle, 0.5 = square-root balancing, 1 = all classes equally often (helps UAR on skewed data such as FER+)
    class_balance: float = 0.0
    num_workers: int = 0
    # CPU training with workers: workers hand batches over through a few reused shared-memory buffers instead of a
    # fresh segment per tensor (data/shared_batches.py; ~1 ms less per batch in the training process)
    shared_batches: bool = True
    drop_last: bool = True
    image_size: int | None = None  # default: the model's
    augment: dict[str, Any] = field(default_factory=dict)  # ImageTransform train options
    caption_field: str = "caption"  # "caption" or "global" etc. for structured captions
    video_frames: int = 0  # >0: train on clips of this many frames
    video_sampler: dict[str, Any] = field(default_factory=dict)  # {name: window|uniform|fps|random_subset, ...}
    consistent_clip_augment: bool = True  # False = EmotionCLIP's independent per-frame crops (faithful)
    # augment whole uint8 batches on the training device (data/batch_augment.py) instead of each sample in the
    # DataLoader: same operations and distribution; the dataset only decodes and stages images at stage_size
    batch_augment: bool = False
    stage_size: int | None = None  # batch_augment staging size (default: the model's input size)
    cache_images: bool = False  # batch_augment: keep staged images in (shared) memory, decode each file once per run
    synthetic: dict[str, Any] = field(default_factory=lambda: {"n_train": 2048, "n_val": 512, "image_size": 64, "seed": 0})
    # tar shards: shuffle_buffer (samples held undecoded for shuffling; default 1000), resampled (draw shards with
    # replacement: every rank/worker streams forever, so no rank runs dry; default false), epoch_samples (nominal
    # epoch size when resampled; default the shards' sample count)
    shards: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    name: str = "clip"  # clip | sentiment | global_local
    gather: bool = True  # multi-process: contrast against all ranks' samples (False = per-GPU batch, as EmoCLIP)
    local_loss: bool = True  # distributed: contrast local rows against gathered columns (open_clip local_loss)
    gather_with_grad: bool = True
    dedupe_targets: bool = True  # identical captions are positives, never negatives
    label_positives: bool = False  # same label = positive (supervised contrastive ablation)
    sentiment: dict[str, Any] = field(default_factory=lambda: {"lam": 10.0, "eps": 1e-6, "max_penalty": None,
                                                               "faithful": False, "scorer": "vader"})
    global_local: dict[str, Any] = field(default_factory=dict)  # GlobalLocalLoss kwargs + global_text + sample_k
    mining: dict[str, Any] = field(default_factory=lambda: {"guide": "off"})  # PositiveMiner kwargs + encoder


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 5e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    momentum: float = 0.9  # sgd
    # Per-group learning rates (EmotionCLIP, methods.md §2.6); None = `lr`.
    lr_gain_bias: float | None = None
    lr_weights: float | None = None
    lr_head: float | None = None
    lr_logit_scale: float | None = None
    lr_text: float | None = None  # a pretrained text body being tuned (MiniLM `text.bert.`); None = its group's lr
    schedule: str = "cosine"  # cosine | multistep | constant
    warmup_steps: int = 0
    milestones: list[int] = field(default_factory=list)  # multistep, in epochs
    gamma: float = 0.1
    grad_clip: float | None = None
    fused: bool | None = None  # None = fused AdamW on CUDA and CPU (one kernel for every tensor; ~4-7x faster
    # optimizer steps on CPU than torch's per-tensor loop); false = torch's default AdamW


@dataclass
class RunConfig:
    epochs: int = 1
    max_steps: int | None = None
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 uses a GradScaler)
    accum_freq: int = 1  # >1: feature-caching accumulation (contrastive-correct, open_clip --accum-freq)
    grad_checkpointing: bool = False
    compile: bool = False
    channels_last: bool = False
    log_every: int = 10
    eval_every_epochs: int = 1
    save_every_steps: int | None = None
    keep_last: int = 2
    best_metric: str | None = "uar"  # validation metric for best.safetensors (never the test split)
    tensorboard: bool = False
    progress: bool = True


@dataclass
class EvalConfig:
    prompts: str = "expression"  # a prompt set of affectclip.eval.prompts ("expression", "expclip5", "descriptions", ...)
    agg: str = "embedding"


@dataclass
class TrainConfig:
    method: str = "clip"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def list_recipes() -> dict[str, str]:
    """Recipe name -> one-line description, for `affectclip recipes`."""
    out = {}
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        out[path.stem] = str(data.get("description", "")).strip().splitlines()[0] if data.get("description") else ""
    return out


def resolve_recipe(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        return path
    candidate = RECIPES_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        raise ConfigError(f"unknown recipe '{name_or_path}'; available: {', '.join(list_recipes())} (or pass a YAML path)")
    return candidate


def _read_recipe(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The YAML mapping in `path` merged over its `base:` recipe, if it names one (a recipe name, or a YAML path
    relative to this file). A second stage then states only what differs from the first, so the two cannot drift."""
    if path.resolve() in chain:
        loop = " -> ".join(p.name for p in (*chain, path.resolve()))
        raise ConfigError(f"recipe {path} inherits from itself through 'base:' ({loop}); remove one of the bases")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (base, model, data, loss, optim, run, eval)")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: 'base' must be a recipe name or a YAML path, got {base!r}")
    base_path = Path(base)
    if base_path.suffix in (".yaml", ".yml") and not base_path.is_absolute():
        base_path = path.parent / base_path
    try:
        base_path = resolve_recipe(str(base_path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: base: {exc}") from exc
    return _merge(_read_recipe(base_path, (*chain, path.resolve())), raw)


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """`child` over `base`: mappings merge key by key, lists and scalars replace (a list is one value)."""
    out = dict(base)
    for key, value in child.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Recipe name or YAML path (+ `a.b=value` overrides) -> validated TrainConfig. A recipe may start with
    `base: OTHER` to inherit every section of another recipe and override only some keys."""
    raw: dict[str, Any] = _read_recipe(resolve_recipe(name_or_path)) if name_or_path else {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like section.key=value (e.g. run.epochs=3)")
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return _build(TrainConfig, raw, "")


def require_set(cfg: TrainConfig) -> None:
    """Refuse to run a config that still holds a `???` value: a recipe marks with it what only the user can give
    (stage 2's `model.pretrained`), and running without it would train a silently different model."""

    def walk(node: Any, key: str) -> list[str]:
        if isinstance(node, dict):
            return [k for name, value in node.items() for k in walk(value, f"{key}.{name}" if key else str(name))]
        if isinstance(node, (list, tuple)):
            return [k for i, value in enumerate(node) for k in walk(value, f"{key}[{i}]")]
        return [key] if node == MISSING else []

    unset = walk(cfg.to_dict(), "")
    if unset:
        example = " ".join(f"{k}=VALUE" for k in unset)
        raise ConfigError(f"the recipe leaves {', '.join(unset)} for you to set (marked {MISSING}); pass "
                          f"{example} (its description says what is expected)")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"'{prefix or 'config'}' must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"in '{prefix}'" if prefix else "at the top level"
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} {where}; allowed: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(hints[name], value, key)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if tp is Any:
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}' must be a list, got {value!r}")
        items = [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
        if origin is tuple:
            if len(args) != len(value) and not (len(args) == 2 and args[1] is Ellipsis):
                raise ConfigError(f"'{key}' must have {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, key) for a, v in zip(args, value, strict=False))
        return items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"'{key}' must be {tp.__name__}, got {value!r}")
    if tp is float:
        raise ConfigError(f"'{key}' must be a number, got {value!r}")
    return value


def diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted key paths where two config dicts differ (a resumed run or a feature cache against the config now)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in set(a) | set(b) for k in diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]
