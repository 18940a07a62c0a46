"""Reading and writing model weights: our own safetensors checkpoints and foreign OpenAI/open_clip/method files.

Our checkpoint = ONE `.safetensors` file whose metadata holds the model config (key `affectclip_config`), so a file
alone re-creates the model. Foreign files (OpenAI TorchScript, open_clip state dicts, EmotionCLIP `{"model": sd}`,
EmoCLIP DDP `module.` dicts) are unwrapped and mapped to our key layout: open_clip's top-level text keys
(`token_embedding`, `transformer.*`, ...) live under `text.` here; `visual.*` and `logit_scale` are identical.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from affectclip.core.io import atomic_path
from affectclip.core.normalization import CLIP_MEAN, CLIP_STD
from affectclip.models.errors import CheckpointError
from affectclip.models.torchscript import read_torchscript_tensors

log = logging.getLogger(__name__)

CONFIG_KEY = "affectclip_config"
_TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
_DROPPED_KEYS = ("attn_mask", "input_resolution", "context_length", "vocab_size")  # buffers / OpenAI ints
_WRAPPER_KEYS = ("state_dict", "model")
_RUNTIME_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers
_MAX_LISTED = 10


def is_torchscript(path: str | os.PathLike) -> bool:
    """True for a TorchScript archive (how OpenAI distributes CLIP): a zip with a `constants.pkl` record."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name == "constants.pkl" or name.endswith("/constants.pkl") for name in archive.namelist())


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Descend through training wrappers ({"model": sd}, {"state_dict": sd, "epoch": ...}) to the tensors."""
    while isinstance(obj, dict) and not _is_tensor_dict(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not _is_tensor_dict(obj):
        found = sorted(obj)[:_MAX_LISTED] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{path} does not contain a state dict of tensors (found: {found}); expected a model state dict, "
            f"optionally wrapped under one of {_WRAPPER_KEYS}"
        )
    out = {}
    for key, value in obj.items():
        for prefix in _RUNTIME_PREFIXES:
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors, a torch pickle (.pt/.pth/.bin, `weights_only=True`) or a TorchScript
    archive (tensors read without running its code); unwrap training wrappers and strip `module.`/`_orig_mod.`
    prefixes. Tensors are returned on CPU. Nothing in the file is executed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            obj = load_file(str(path), device="cpu")
        elif is_torchscript(path):
            obj = read_torchscript_tensors(path)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError,
            zipfile.BadZipFile, KeyError, TypeError, AttributeError, IndexError, OverflowError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise CheckpointError(
            f"cannot read checkpoint {path}: {reason}. Expected a .safetensors file, a PyTorch state dict saved with "
            "torch.save (.pt/.pth/.bin, read with weights_only=True: a file that pickles whole objects must be "
            "re-saved as its state_dict()) or an OpenAI TorchScript archive; re-download it if it is truncated"
        ) from exc
    return _unwrap(obj, path)


def read_checkpoint_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The model config stored in one of our .safetensors checkpoints, or None for any other file."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {' '.join(str(exc).split())}") from exc
    if CONFIG_KEY not in metadata:
        return None
    try:
        config = json.loads(metadata[CONFIG_KEY])
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: metadata '{CONFIG_KEY}' is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: metadata '{CONFIG_KEY}' is a {type(config).__name__}, expected a JSON object")
    return config


def convert_open_clip_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip/OpenAI key layout -> ours: top-level text keys move under `text.`; `visual.*`, `logit_scale`
    and other keys stay; non-parameter buffers are dropped. A container prefix around the CLIP keys (e.g. a
    method's `backbone.`) is removed. Already-converted dicts pass through unchanged."""
    anchor = next((k for k in sd if k.endswith("visual.conv1.weight")), None)
    prefix = anchor[: -len("visual.conv1.weight")] if anchor else ""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        key = key.removeprefix(prefix) if prefix else key
        if key in _DROPPED_KEYS or key.endswith(".attn_mask"):
            continue
        if key.startswith(_TEXT_KEYS):
            key = "text." + key
        out[key] = value
    return out


def to_open_clip_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our CLIP DualEncoder -> an open_clip/OpenAI-layout state dict (`text.` prefix removed), for export to
    tools that load CLIP checkpoints. The temporal head has no open_clip counterpart and is left out."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("temporal."):
            continue
        out[key.removeprefix("text.")] = value
    return out


def count_blocks(sd: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in sd if (m := pattern.match(k))})


def heads_of_width(width: int) -> int | None:
    """Released CLIPs use one attention head per 64 channels; None where that rule cannot hold (no weight records
    the head count, so the user has to give it)."""
    return width // 64 if width >= 64 and width % 64 == 0 else None


def infer_clip_config(
    sd: dict[str, torch.Tensor], quick_gelu: bool | None = None, torchscript: bool = False
) -> dict[str, Any]:
    """Model config of a CLIP ViT state dict (either key layout). Heads = width // 64 as in every released CLIP
    (None where the width is no multiple of 64: the caller must then be given the head count).

    The activation is not recorded in the weights: TorchScript archives come from OpenAI (QuickGELU); otherwise
    exact GELU is assumed with a warning, unless `quick_gelu` is given.
    """
    sd = convert_open_clip_state_dict(sd)
    if "visual.conv1.weight" not in sd or "text.token_embedding.weight" not in sd:
        if any(k.startswith("visual.layer1.") for k in sd):
            raise ValueError("this is a ResNet CLIP checkpoint; only ViT CLIP image towers are supported")
        raise ValueError(
            "cannot infer a CLIP ViT architecture: the state dict lacks 'visual.conv1.weight' or "
            f"'token_embedding.weight' (first keys: {sorted(sd)[:_MAX_LISTED]}); pass a model name, "
            "e.g. create_model('ViT-B-32', pretrained=path)"
        )
    if quick_gelu is None:
        quick_gelu = torchscript
        if not torchscript:
            log.warning(
                "activation cannot be read from the weights; assuming exact GELU (open_clip/LAION). For OpenAI "
                "weights pass quick_gelu=True (create_model(path, quick_gelu=True))"
            )
    v_width = int(sd["visual.conv1.weight"].shape[0])
    patch = sd["visual.conv1.weight"].shape[-1]
    grid = round(math.sqrt(sd["visual.positional_embedding"].shape[0] - 1))
    t_width = sd["text.ln_final.weight"].shape[0]
    return {
        "embed_dim": int(sd["text.text_projection"].shape[1]),
        "vision_cfg": {
            "type": "vit",
            "image_size": int(patch * grid),
            "patch_size": int(patch),
            "width": int(v_width),
            "layers": count_blocks(sd, "visual.transformer.resblocks."),
            "head_width": 64 if heads_of_width(v_width) else None,
            "mlp_ratio": sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / v_width,
        },
        "text_cfg": {
            "type": "clip",
            "context_length": int(sd["text.positional_embedding"].shape[0]),
            "vocab_size": int(sd["text.token_embedding.weight"].shape[0]),
            "width": int(t_width),
            "heads": heads_of_width(int(t_width)),
            "layers": count_blocks(sd, "text.transformer.resblocks."),
            "tokenizer": "clip_bpe",
        },
        "temporal_cfg": None,
        "quick_gelu": bool(quick_gelu),
        "preprocess": {
            "mean": list(CLIP_MEAN),
            "std": list(CLIP_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
        "init_logit_scale": float(sd["logit_scale"]) if "logit_scale" in sd else math.log(1 / 0.07),
    }


def _listed(keys: list[str]) -> str:
    if not keys:
        return "none"
    more = f", ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def check_tensors(sd: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights a model would silently compute garbage with: a non-float tensor where the model holds a
    float one (int8/bool weights), and NaN/inf values (a NaN logit scale gives NaN scores that still look `ok`)."""
    for key, value in sd.items():
        want = expected.get(key)
        if want is not None and want.is_floating_point() and not value.is_floating_point():
            raise CheckpointError(f"{source}: tensor '{key}' is {value.dtype}, expected a floating-point tensor "
                                  f"({want.dtype}); the file is not a float checkpoint of this model")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{source}: tensor '{key}' holds NaN or inf values; the checkpoint is broken "
                                  "(e.g. saved after a diverged step): use an earlier one")


def _check_external(model: nn.Module, sd: dict[str, torch.Tensor], external: tuple[str, ...], source: str) -> None:
    """`external_weights` may name frozen parts a package provides (a MiniLM), never the whole model: a file that
    lists every tensor as external would load as an untrained model."""
    names = list(model.state_dict())
    if any(not p for p in external) or not sd:
        raise CheckpointError(f"{source}: holds no weights of its own (external_weights={list(external)}); "
                              "a checkpoint must contain the trained tensors")
    covered = [k for k in names if k.startswith(external)]
    image = [k for k in names if k.startswith("visual.")]
    if "logit_scale" in covered or (image and set(image) <= set(covered)):
        raise CheckpointError(f"{source}: external_weights={list(external)} covers the image tower or the logit "
                              "scale, which no package provides; the file would load with untrained weights")


def load_weights(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Strictly load `sd` (our layout) into `model`, with a one-line error that lists the mismatching keys.

    A temporal head absent from the file is the one tolerated gap: CLIP weights initialise the frame encoder and
    the head starts random (EmotionCLIP/EmoCLIP initialisation)."""
    has_temporal = any(k.startswith("temporal.") for k in sd)
    expected = model.state_dict()
    external = tuple((getattr(model, "config", None) or {}).get("external_weights") or ())
    if external or not sd:
        _check_external(model, sd, external, source)
    missing = [k for k in expected if k not in sd and (has_temporal or not k.startswith("temporal."))
               and not (external and k.startswith(external))]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in sd and sd[k].shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"weights in {source} do not match the model architecture: "
            f"missing keys ({len(missing)}): {_listed(missing)}; "
            f"unexpected keys ({len(unexpected)}): {_listed(unexpected)}; "
            f"shape mismatches ({len(shapes)}): {_listed(shapes)}. "
            "What to do: use the architecture the weights were trained with (create_model(path) infers it for "
            "OpenAI/open_clip/EmotionCLIP/EmoCLIP files; our own checkpoints carry their config), or pick the "
            "matching config name from list_models(); check the vision_cfg/text_cfg overrides you passed."
        )
    check_tensors(sd, expected, source)
    model.load_state_dict(sd, strict=False)
    if not has_temporal and getattr(model, "temporal", None) is not None:
        log.info("%s has no temporal head weights; the temporal head keeps its random initialisation", source)


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    extra_metadata: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the model's weights and config to ONE .safetensors file (atomically: temp file, then rename), so
    `create_model(path)` re-creates it without any other file.

    Key prefixes listed in the config's `external_weights` (e.g. ["text.bert."] for a frozen MiniLM) are left out:
    building the model loads them from their own installed package, which keeps a shipped file small. Leaving out a
    trainable parameter would lose trained weights, so that is an error.

    `dtype` (e.g. torch.float16) stores the floating tensors in that type, halving a file that is shipped or sent;
    loading casts them back into the model's own parameter dtype. Integer buffers keep their type."""
    path = Path(path)
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating type such as torch.float16; got {dtype}")
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoints are written as .safetensors; got '{path.name}'")
    config = getattr(model, "config", None)
    if not config:
        raise ValueError(
            "model.config is empty; build the model with create_model() so its config can be saved"
        )
    metadata = {CONFIG_KEY: json.dumps(config), "format": "pt"}
    for key, value in (extra_metadata or {}).items():
        if key in metadata:
            raise ValueError(f"extra_metadata key '{key}' is reserved")
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    external = tuple(config.get("external_weights") or ())
    trained = [n for n, p in model.named_parameters() if p.requires_grad and external and n.startswith(external)]
    if trained:
        raise ValueError(f"external_weights {list(external)} covers trainable parameters ({_listed(trained)}); "
                         "their trained values would be lost: freeze them or drop the prefix from the config")
    tensors = {k: v.detach().to("cpu", dtype=dtype if dtype and v.is_floating_point() else v.dtype).contiguous()
               for k, v in model.state_dict().items() if not (external and k.startswith(external))}
    return _write_atomic(tensors, path, metadata)


def _write_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    """Temp file, then rename: a crash never leaves a half-written checkpoint under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def average_checkpoints(
    paths: list[str | os.PathLike], out: str | os.PathLike, weights: list[float] | None = None
) -> Path:
    """Average the weights of several of our checkpoints of ONE model into `out` (a uniform or weighted model
    soup, or the last-N checkpoints of one run) and return its path.

    Averaging helps only where the inputs lie in one basin: runs fine-tuned from the same starting weights, or
    checkpoints of one run. Weights of unrelated runs average to a broken model, so evaluate the result. The
    inputs must share the model config and tensor names/shapes. Float tensors are averaged in float64 and stored
    in their own dtype; integer buffers must agree, except BatchNorm's `num_batches_tracked`, which keeps the
    largest count. The output carries the first input's metadata plus `averaged_from` and `average_weights`."""
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise ValueError(f"averaging needs at least two checkpoints, got {len(paths)}")
    weights = [1.0] * len(paths) if weights is None else [float(w) for w in weights]
    if len(weights) != len(paths):
        raise ValueError(f"got {len(weights)} weights for {len(paths)} checkpoints; "
                         "give one weight per checkpoint")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {weights}")
    total = sum(weights)
    weights = [w / total for w in weights]
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"checkpoints are written as .safetensors; got '{out.name}'")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint file(s) not found: {', '.join(missing)}")
    if out.resolve() in {p.resolve() for p in paths}:
        raise ValueError(f"the output {out} is one of the inputs; write the average to a new file")
    configs = [read_checkpoint_config(p) for p in paths]
    for path, config in zip(paths, configs, strict=True):
        if config is None:
            raise ValueError(f"{path} is not an affectclip checkpoint (a .safetensors file with a stored model "
                             "config); average only checkpoints written by `affectclip train` or save_checkpoint")
        if config != configs[0]:
            raise ValueError(f"{path} holds a different model config than {paths[0]}; only checkpoints of one "
                             "model can be averaged")
    with safe_open(str(paths[0]), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    acc: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for path, weight in zip(paths, weights, strict=True):
        sd = load_file(str(path), device="cpu")
        if acc and sd.keys() != acc.keys():
            diff = sorted(set(sd) ^ set(acc))
            raise ValueError(f"{path} and {paths[0]} hold different tensors ({_listed(diff)})")
        for key, value in sd.items():
            dtypes.setdefault(key, value.dtype)
            if key in acc and value.is_floating_point() != dtypes[key].is_floating_point:
                raise ValueError(f"{path}: tensor '{key}' is {value.dtype}, but {dtypes[key]} in {paths[0]}")
            if key in acc and value.shape != acc[key].shape:
                raise ValueError(f"{path}: tensor '{key}' has shape {tuple(value.shape)}, expected "
                                 f"{tuple(acc[key].shape)} as in {paths[0]}")
            if value.is_floating_point():
                if not torch.isfinite(value).all():
                    raise ValueError(f"{path}: tensor '{key}' holds NaN or inf; that checkpoint is broken, "
                                     "leave it out")
                acc[key] = acc.get(key, 0) + weight * value.double()
            elif key not in acc:
                acc[key] = value
            elif key.endswith("num_batches_tracked"):
                acc[key] = torch.maximum(acc[key], value)
            elif not torch.equal(acc[key], value):
                raise ValueError(f"{path}: integer tensor '{key}' differs from {paths[0]}'s; these are not "
                                 "checkpoints of one model")
    tensors = {k: v.to(dtypes[k]).contiguous() for k, v in acc.items()}
    metadata["averaged_from"] = json.dumps([str(p) for p in paths])
    metadata["average_weights"] = json.dumps(weights)
    return _write_atomic(tensors, out, metadata)
