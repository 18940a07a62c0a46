"""The seed repositories' checkpoint layouts: Xeaver/EmotionCLIP and NickyFot/EmoCLIP -> our keys and config.

What each file holds and which behaviour of the original code our modules reproduce is listed in
`shared/testvectors/{emotionclip,emoclip}/README.md`; in short:

* EmotionCLIP (`latest.pt`, a training checkpoint whose `model` entry is the state dict): `backbone.*` = open_clip
  CLIP (exact GELU) whose image tower takes the subject mask; `visual_head.*` = a post-norm `nn.TransformerEncoder`
  with 8 heads (hard-coded), frame position table of `video_len` rows, residual around the encoder ->
  `emotionclip_transformer`. `logit_scale` and `backbone.logit_scale` are one shared parameter.
* EmoCLIP (`torch.save(DDP(model).state_dict())`, `module.` prefix): `backbone.*` = OpenAI CLIP (QuickGELU; fp16
  linear weights), `temporal.*` = TemporalTransformer (CLS token, a 1,024-row position table, pre-norm blocks,
  tanh-GELU, the head-size swap) -> `emoclip_transformer`. `logit_scale` is VClip's own (the one used);
  `backbone.logit_scale` is CLIP's frozen, unused one and is dropped.

Attention head counts are not recorded in any weight: released CLIPs use width/64 heads, EmotionCLIP's head 8 and
EmoCLIP's release 8 temporal heads; a model built otherwise needs them passed (the factory says which).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from affectclip.models.checkpoint import convert_open_clip_state_dict, count_blocks, infer_clip_config
from affectclip.models.errors import CheckpointError

EMOTIONCLIP, EMOCLIP, CLIP = "emotionclip", "emoclip", "clip"
EMOTIONCLIP_TEMPORAL_HEADS = 8  # VisualHead's nn.TransformerEncoderLayer(nhead=8), never passed by EmotionCLIP
EMOCLIP_RELEASE_HEADS = 8  # VClip(nhead=8) in the release
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # EmotionCLIP's loaders, all of them

_EMOCLIP_RULES = [  # TemporalTransformer's Residual(PreNorm(...)) nesting -> our flat blocks
    (re.compile(r"temporal\.temporal_transformer\.layers\.(\d+)\.0\.fn\.norm\."), r"temporal.blocks.\1.0.norm."),
    (re.compile(r"temporal\.temporal_transformer\.layers\.(\d+)\.0\.fn\.fn\.to_qkv\."), r"temporal.blocks.\1.0.to_qkv."),
    (re.compile(r"temporal\.temporal_transformer\.layers\.(\d+)\.0\.fn\.fn\.to_out\.0\."), r"temporal.blocks.\1.0.to_out."),
    (re.compile(r"temporal\.temporal_transformer\.layers\.(\d+)\.1\.fn\.norm\."), r"temporal.blocks.\1.1.net.0."),
    (re.compile(r"temporal\.temporal_transformer\.layers\.(\d+)\.1\.fn\.fn\.net\.(0|3)\."),
     lambda m: f"temporal.blocks.{m.group(1)}.1.net.{1 if m.group(2) == '0' else 3}."),
]


def detect_layout(sd: dict[str, torch.Tensor]) -> str:
    """'emotionclip', 'emoclip' or 'clip' (OpenAI/open_clip, possibly under a container prefix) from the keys."""
    if "backbone.visual.conv1.weight" in sd:
        if any(k.startswith("visual_head.") for k in sd):
            return EMOTIONCLIP
        if any(k.startswith("temporal.temporal_transformer.") for k in sd):
            return EMOCLIP
    return CLIP


def _rename_emoclip(key: str) -> str:
    for pattern, repl in _EMOCLIP_RULES:
        if pattern.match(key):
            return pattern.sub(repl, key, count=1)
    return key


def convert_seed_state_dict(sd: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """A seed repository's state dict (runtime prefixes already stripped) -> our key layout."""
    own_scale = sd.get("logit_scale")
    if own_scale is None and layout == EMOTIONCLIP:  # one shared parameter saved under two names
        own_scale = sd.get("backbone.logit_scale")
    backbone = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
    backbone.pop("logit_scale", None)  # EmotionCLIP: the same parameter; EmoCLIP: CLIP's unused one
    out = convert_open_clip_state_dict(backbone)
    for key, value in sd.items():
        if key.startswith("backbone.") or key == "logit_scale":
            continue
        if layout == EMOTIONCLIP:
            if key == "visual_head.position_ids":  # arange(video_len) buffer, rebuilt by our head
                continue
            key = key.replace("visual_head.fusion_layer.", "temporal.encoder.", 1)
            key = key.replace("visual_head.frame_position_embedding.", "temporal.frame_position.", 1)
        elif layout == EMOCLIP:
            key = _rename_emoclip(key)
        out[key] = value
    if own_scale is not None:
        out["logit_scale"] = own_scale
    return out


def infer_config(
    sd: dict[str, torch.Tensor], layout: str, quick_gelu: bool | None = None, torchscript: bool = False
) -> dict[str, Any]:
    """Our model config for a state dict converted from `layout`; values no weight records are left None (see
    UNINFERABLE). `quick_gelu`/`torchscript` only matter for plain CLIP files (the seeds fix the activation)."""
    if layout == CLIP:
        return infer_clip_config(sd, quick_gelu=quick_gelu, torchscript=torchscript)
    config = infer_clip_config(sd, quick_gelu=layout == EMOCLIP)
    if layout == EMOTIONCLIP:
        config["vision_cfg"]["subject_token"] = True
        config["temporal_cfg"] = {
            "type": "emotionclip_transformer",
            "layers": count_blocks(sd, "temporal.encoder.layers."),
            "heads": EMOTIONCLIP_TEMPORAL_HEADS,
            "ffn_dim": _rows(sd, "temporal.encoder.layers.0.linear1.weight"),
            "max_frames": _rows(sd, "temporal.frame_position.weight"),
        }
        config["tokenizer_options"] = {"truncate_keep_eot": False}  # its tokenizer drops EOT from long texts
        config["preprocess"] = {**config["preprocess"], "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    else:
        inner = _rows(sd, "temporal.blocks.0.0.to_qkv.weight") // 3
        heads = EMOCLIP_RELEASE_HEADS if inner % EMOCLIP_RELEASE_HEADS == 0 else None
        config["temporal_cfg"] = {
            "type": "emoclip_transformer",
            "layers": count_blocks(sd, "temporal.blocks."),
            "heads": heads,
            "dim_head": inner // heads if heads else None,
            "ffn_dim": _rows(sd, "temporal.blocks.0.1.net.1.weight"),
            "max_frames": int(sd["temporal.pos_embedding"].shape[1]) - 1 if "temporal.pos_embedding" in sd else None,
        }
    config["source_layout"] = layout
    return config


def _rows(sd: dict[str, torch.Tensor], key: str) -> int:
    if key not in sd or sd[key].ndim < 1:
        raise CheckpointError(f"tensor '{key}' is missing or scalar; the file is not a complete seed checkpoint")
    return int(sd[key].shape[0])


UNINFERABLE = {  # config path -> how to give it (for the error of a None left by the inference)
    ("vision_cfg", "head_width"): "vision_cfg={'head_width': W}",
    ("temporal_cfg", "max_frames"): "temporal_cfg={'max_frames': T}",
    ("text_cfg", "heads"): "text_cfg={'heads': N}",
    ("temporal_cfg", "heads"): "temporal_cfg={'heads': N, 'dim_head': D}",
    ("temporal_cfg", "dim_head"): "temporal_cfg={'heads': N, 'dim_head': D}",
}
