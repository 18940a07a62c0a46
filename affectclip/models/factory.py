"""Model factory: architecture configs (JSON) -> DualEncoder, plus the matching tokenizer.

The matching image transform is `affectclip.data.transforms.create_transforms(model)` (models/ never imports data/).

`create_model` accepts a config name from `models/configs/`, a config dict, one of our .safetensors checkpoints
(config read from its metadata) or a foreign OpenAI/open_clip state dict (architecture inferred). Towers are built
through the registries; a tower's module is imported only when a config names its type, so building a CLIP model
never imports the CNN/MiniLM code and vice versa.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from affectclip.core.normalization import CLIP_MEAN, CLIP_STD
from affectclip.models.checkpoint import (
    CheckpointError,
    convert_open_clip_state_dict,
    is_torchscript,
    load_state_dict,
    load_weights,
    read_checkpoint_config,
)
from affectclip.models.dual_encoder import DualEncoder
from affectclip.models.registry import IMAGE_TOWERS, TEMPORAL_HEADS, TEXT_TOWERS, Registry
from affectclip.models.seed_layouts import (
    CLIP,
    UNINFERABLE,
    convert_seed_state_dict,
    detect_layout,
    infer_config,
)

CONFIG_DIR = Path(__file__).parent / "configs"
TOWER_MODULES = {
    "vit": "affectclip.models.vit",
    "clip": "affectclip.models.text_clip",
    "mobilenet_v2": "affectclip.models.mobilenet_v2",
    "efficientnet_lite0": "affectclip.models.efficientnet_lite",
    "small_cnn": "affectclip.models.small_cnn",
    "minilm": "affectclip.models.text_minilm",
}
TEMPORAL_MODULE = "affectclip.models.temporal"
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ConfigSource = str | os.PathLike | dict | nn.Module
SIZED_SECTIONS = ("embed_dim", "vision_cfg", "text_cfg", "temporal_cfg")
SIZE_LIMITS = {  # far above every released model (ViT-bigG: width 1664, 48 layers; EmoCLIP: 16384-wide heads)
    "embed_dim": 16384, "width": 16384, "layers": 256, "heads": 1024, "head_width": 16384, "dim_head": 16384,
    "ffn_dim": 65536, "mlp_ratio": 64, "image_size": 4096, "patch_size": 4096, "context_length": 16384,
    "vocab_size": 1_000_000, "max_frames": 100_000,
}
MAX_PARAMETERS = 20_000_000_000


def list_models() -> list[str]:
    """Names of the architecture configs shipped in models/configs/."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def config_from_open_clip(cfg: dict[str, Any]) -> dict[str, Any]:
    """An open_clip model config (`open_clip.CLIP(embed_dim, vision_cfg, text_cfg, quick_gelu)` arguments or a
    `model_configs/*.json`) -> our config, with open_clip's defaults made explicit."""
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    image_size = vision.get("image_size", 224)
    if isinstance(image_size, (list, tuple)):
        if len(set(image_size)) != 1:
            raise ValueError(
                f"only square images are supported, open_clip config has image_size={image_size}"
            )
        image_size = image_size[0]
    return {
        "embed_dim": cfg["embed_dim"],
        "vision_cfg": {
            "type": "vit",
            "image_size": image_size,
            "patch_size": vision.get("patch_size", 16),
            "width": vision.get("width", 768),
            "layers": vision.get("layers", 12),
            "head_width": vision.get("head_width", 64),
            "mlp_ratio": vision.get("mlp_ratio", 4.0),
            "subject_token": False,
        },
        "text_cfg": {
            "type": "clip",
            "context_length": text.get("context_length", 77),
            "vocab_size": text.get("vocab_size", 49408),
            "width": text.get("width", 512),
            "heads": text.get("heads", 8),
            "layers": text.get("layers", 12),
            "mlp_ratio": text.get("mlp_ratio", 4.0),
            "tokenizer": "clip_bpe",
        },
        "temporal_cfg": None,
        "quick_gelu": bool(cfg.get("quick_gelu", False)),
        "preprocess": {
            "mean": list(CLIP_MEAN),
            "std": list(CLIP_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
        "init_logit_scale": math.log(1 / 0.07),
    }


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict update: overrides={"vision_cfg": {"subject_token": True}} patches one nested key."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _looks_like_path(name: str) -> bool:
    return (
        os.sep in name or "/" in name or Path(name).suffix in {".safetensors", ".pt", ".pth", ".bin", ".json"}
    )


def get_model_config(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """Config of a registered name, a config .json file, or one of our .safetensors checkpoints."""
    name = str(name_or_path)
    if name in list_models():
        return json.loads((CONFIG_DIR / f"{name}.json").read_text())
    path = Path(name)
    if path.is_file() and path.suffix == ".json":
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"model config {path} is not valid JSON: {exc}") from exc
    if path.is_file():
        config = read_checkpoint_config(path)
        if config is None:
            raise ValueError(
                f"{path} holds no affectclip config; use create_model(path) to infer a CLIP architecture"
            )
        return config
    if _looks_like_path(name):
        raise FileNotFoundError(f"model file not found: {path}")
    raise ValueError(
        f"unknown model '{name}'; available: {', '.join(list_models())} (or pass a checkpoint path)"
    )


def _resolve_config(source: ConfigSource) -> dict[str, Any]:
    if isinstance(source, nn.Module):
        if not getattr(source, "config", None):
            raise ValueError(f"{type(source).__name__} has no config; build it with create_model()")
        return source.config
    if isinstance(source, dict):
        return source
    return get_model_config(source)


def _tower_kwargs(ctor: Any, section: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Tower arguments from its config section; the top-level `quick_gelu` reaches towers that accept it."""
    kwargs = {k: v for k, v in section.items() if k != "type"}
    kwargs["output_dim"] = config["embed_dim"]
    if "quick_gelu" in inspect.signature(ctor).parameters:
        kwargs.setdefault("quick_gelu", bool(config.get("quick_gelu", False)))
    return kwargs


def _build_tower(registry: Registry, section_name: str, config: dict[str, Any]) -> nn.Module:
    section = config.get(section_name)
    if not isinstance(section, dict) or "type" not in section:
        raise ValueError(
            f"model config needs '{section_name}' with a 'type' (one of {sorted(TOWER_MODULES)})"
        )
    kind = section["type"]
    if kind not in TOWER_MODULES:
        raise ValueError(
            f"{section_name}.type '{kind}' is unknown; available: {', '.join(sorted(TOWER_MODULES))}"
        )
    importlib.import_module(TOWER_MODULES[kind])
    ctor = registry.get(kind)
    try:
        return ctor(**_tower_kwargs(ctor, section, config))
    except TypeError as exc:
        raise ValueError(f"invalid {section_name} for tower '{kind}': {exc}") from exc


def build_model(config: dict[str, Any]) -> DualEncoder:
    """A randomly initialised DualEncoder from a full config (stored on `model.config`)."""
    if "embed_dim" not in config:
        raise ValueError("model config needs 'embed_dim'")
    visual = _build_tower(IMAGE_TOWERS, "vision_cfg", config)
    text = _build_tower(TEXT_TOWERS, "text_cfg", config)
    temporal = None
    temporal_cfg = config.get("temporal_cfg")
    if temporal_cfg:
        if "type" not in temporal_cfg:
            raise ValueError(f"temporal_cfg needs a 'type' (e.g. 'mean'); got {temporal_cfg}")
        importlib.import_module(TEMPORAL_MODULE)
        options = {k: v for k, v in temporal_cfg.items() if k != "type"}
        temporal = TEMPORAL_HEADS.build(temporal_cfg["type"], dim=config["embed_dim"], **options)
    return DualEncoder(
        visual,
        text,
        temporal=temporal,
        init_logit_scale=config.get("init_logit_scale", math.log(1 / 0.07)),
        config=config,
    )


def read_foreign_weights(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Any supported checkpoint file -> (state dict in our key layout, its layout: clip/emotionclip/emoclip)."""
    raw = load_state_dict(path)
    layout = detect_layout(raw)
    return (convert_open_clip_state_dict(raw) if layout == CLIP else convert_seed_state_dict(raw, layout)), layout


def _infer(path: Path, weights: dict[str, torch.Tensor], layout: str, quick_gelu: bool | None) -> dict[str, Any]:
    try:
        return infer_config(weights, layout, quick_gelu=quick_gelu, torchscript=is_torchscript(path))
    except (ValueError, KeyError, IndexError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def _check_inferred(config: dict[str, Any], source: str) -> None:
    """A value no weight records (a head count) must have come from the caller's overrides."""
    for (section, key), hint in UNINFERABLE.items():
        if isinstance(config.get(section), dict) and key in config[section] and config[section][key] is None:
            raise CheckpointError(
                f"{source}: {section}.{key} cannot be inferred from the weights (released models use 64-wide "
                f"heads; this one does not); pass it: create_model(path, {hint}), or a config name with pretrained=path"
            )


def _walk_numbers(obj: Any, path: str) -> list[tuple[str, float]]:
    if isinstance(obj, dict):
        return [item for k, v in obj.items() for item in _walk_numbers(v, f"{path}.{k}" if path else str(k))]
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return [(path, obj)]
    return []


def check_config_sizes(config: dict[str, Any], source: str) -> None:
    """Refuse a config from a file before anything is allocated: every number finite, every count within
    SIZE_LIMITS, and a CLIP-type model below MAX_PARAMETERS (counted on the meta device: shapes, no memory)."""
    for key, value in _walk_numbers({k: config.get(k) for k in SIZED_SECTIONS}, ""):
        name = key.rsplit(".", 1)[-1]
        if not math.isfinite(value):
            raise CheckpointError(f"{source}: config value {key}={value} is not finite")
        limit = SIZE_LIMITS.get(name)
        if limit is not None and not 0 <= value <= limit:
            raise CheckpointError(f"{source}: config value {key}={value} is outside [0, {limit}]; the file's config "
                                  "is corrupt or hostile")
    types = {(config.get(s) or {}).get("type") for s in ("vision_cfg", "text_cfg")}
    if types <= {"vit", "clip"}:
        with torch.device("meta"):
            count = sum(p.numel() for p in build_model(config).parameters())
        if count > MAX_PARAMETERS:
            raise CheckpointError(f"{source}: the config describes {count / 1e9:.1f} B parameters, more than the "
                                  f"{MAX_PARAMETERS / 1e9:.0f} B any supported model has; refusing to allocate it")


def _build_checked(config: dict[str, Any], source: str,
                   build: Callable[[dict[str, Any]], DualEncoder]) -> DualEncoder:
    """Build a config that came from a file: inferred gaps named, sizes bounded, and any construction error
    reported as one line naming the file (the config is as untrusted as the file)."""
    try:
        _check_inferred(config, source)
        check_config_sizes(config, source)
        return build(config)
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError, RuntimeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise CheckpointError(f"{source}: the model config cannot be built ({reason}); the config stored in or "
                              "named by the file is corrupt or was edited by hand") from exc


def _build_for_weights(config: dict[str, Any]) -> DualEncoder:
    """The model a weights file is loaded into. Its image tower skips the ImageNet weight package: the file holds
    every backbone weight the model uses, unless its `external_weights` leave some of them to the package (then,
    and only then, the package is needed). The unused ImageNet classifier never needs the package."""
    if (config.get("vision_cfg") or {}).get("pretrained") is not True:
        return build_model(config)
    model = build_model(_merge(config, {"vision_cfg": {"pretrained": False}}))
    model.config = copy.deepcopy(config)
    external = tuple(config.get("external_weights") or ())
    head = tuple(f"visual.{p}" for p in getattr(model.visual, "package_head_prefixes", tuple)())
    used = [k for k in model.state_dict() if k.startswith("visual.") and not (head and k.startswith(head))]
    if external and any(k.startswith(external) for k in used):
        model.visual.load_package_weights()
    return model




def create_model(
    name_or_path: str | os.PathLike | dict[str, Any],
    pretrained: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    **overrides: Any,
) -> DualEncoder:
    """Build a DualEncoder from a config name/dict/checkpoint; optionally load `pretrained` weights (any supported
    checkpoint format, keys converted, loaded strictly). `overrides` patch the config, nested dicts merged.

    A foreign file (OpenAI/open_clip CLIP, EmotionCLIP `latest.pt`, EmoCLIP DDP dict) has its architecture
    inferred; a value no weight records (a head count that is not width/64) is taken from `overrides`, and its
    absence is an error that names it. A config read from a file is checked for absurd sizes before building."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got '{precision}'")
    weights: dict[str, torch.Tensor] | None = None
    source = ""
    if isinstance(name_or_path, dict):
        config = name_or_path
    elif Path(name_or_path).is_file() and Path(name_or_path).suffix != ".json":
        path = Path(name_or_path)
        source = str(path)
        config = read_checkpoint_config(path)
        weights, layout = read_foreign_weights(path)
        if config is None:
            config = _infer(path, weights, layout, overrides.pop("quick_gelu", None))
    else:
        config = get_model_config(name_or_path)
        if Path(name_or_path).is_file():  # a config .json: as untrusted as a checkpoint's metadata
            source = str(name_or_path)
    config = _merge(config, overrides)
    checked = source  # a config that came from a file is checked before anything is allocated
    if pretrained is not None:
        source = str(pretrained)
        weights, _ = read_foreign_weights(Path(pretrained))
    build = build_model if weights is None else _build_for_weights
    model = _build_checked(config, checked, build) if checked else build(config)
    if weights is not None:
        load_weights(model, weights, source)
    return model.to(device=device, dtype=PRECISIONS[precision])


def get_tokenizer(
    name_or_model_or_config: ConfigSource,
    bpe_path: str | os.PathLike | None = None,
    truncate_keep_eot: bool | None = None,
) -> Callable[[str | list[str]], torch.Tensor]:
    """The tokenizer paired with the model's text tower, at its context length. `truncate_keep_eot=False`
    reproduces EmotionCLIP's truncation (CLIP BPE only); None takes the config's `tokenizer_options` (set for
    EmotionCLIP's own checkpoints), else keeps EOT like open_clip/OpenAI."""
    config = _resolve_config(name_or_model_or_config)
    text_cfg = config["text_cfg"]
    if truncate_keep_eot is None:
        truncate_keep_eot = bool((config.get("tokenizer_options") or {}).get("truncate_keep_eot", True))
    kind = text_cfg.get("tokenizer", "clip_bpe")
    context_length = text_cfg.get("context_length", 77)
    if kind == "clip_bpe":
        from affectclip.models.tokenizer import CLIPTokenizer

        return CLIPTokenizer(context_length, bpe_path=bpe_path, truncate_keep_eot=truncate_keep_eot)
    if kind == "wordpiece":
        if not truncate_keep_eot:
            raise ValueError("truncate_keep_eot=False exists only for the CLIP BPE tokenizer (EmotionCLIP)")
        from affectclip.models.tokenizer_wordpiece import WordPieceTokenizer

        return WordPieceTokenizer(context_length)
    raise ValueError(f"text_cfg.tokenizer '{kind}' is unknown; use 'clip_bpe' or 'wordpiece'")

