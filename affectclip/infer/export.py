"""ONNX export of the image and text towers as two separate graphs, plus a parity check against PyTorch.

Towers are exported separately (tc-clip #11, open_clip #186): a deployment embeds a gallery of images once and
texts once, and the two graphs have different inputs (pixels vs token ids). Each graph outputs L2-normalised
embeddings, so ONNX users compute `exp(logit_scale) · image @ text.T` themselves; `logit_scale`, the preprocessing
and the tokenizer kind are written to `affectclip_onnx.json` next to the graphs.

The TorchScript-based exporter (`dynamo=False`) is used: it handles the towers' data-dependent EOT pooling
(`argmax`) and dynamic batch axes without extra shape annotations, and needs no onnxscript.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

OPSET = 17
IMAGE_FILE, TEXT_FILE, INFO_FILE = "image_encoder.onnx", "text_encoder.onnx", "affectclip_onnx.json"
PARITY_TOLERANCE = 1e-4


class _ImageTower(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels, normalize=True)


class _TextTower(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens, normalize=True)


def _export(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python-side shape checks; parity is verified after
        torch.onnx.export(
            module, (example,), str(path), input_names=[input_name], output_names=["embedding"],
            dynamic_axes={input_name: {0: "batch"}, "embedding": {0: "batch"}}, opset_version=opset, dynamo=False,
        )


@torch.no_grad()
def export_onnx(model: nn.Module, out_dir: str | Path, tokenizer=None, opset: int = OPSET) -> dict[str, Path]:
    """Write `image_encoder.onnx` (input `pixels` float [B,3,S,S], already preprocessed), `text_encoder.onnx`
    (input `tokens` int64 [B,L] from the model's tokenizer) and `affectclip_onnx.json`; returns their paths."""
    from affectclip.data.transforms import create_transforms
    from affectclip.models.factory import get_tokenizer

    if opset < 17:
        raise ValueError(f"opset must be >= 17 (LayerNormalization), got {opset}")
    model = model.eval().float().cpu()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer or get_tokenizer(model)
    size = create_transforms(model).image_size
    paths = {"image": out / IMAGE_FILE, "text": out / TEXT_FILE, "info": out / INFO_FILE}
    _export(_ImageTower(model), torch.zeros(2, 3, size, size), paths["image"], "pixels", opset)
    _export(_TextTower(model), tokenizer(["a happy face", "a sad face"]), paths["text"], "tokens", opset)
    config = getattr(model, "config", {})
    info = {"opset": opset, "logit_scale": float(model.logit_scale.exp()), "image_size": size,
            "context_length": int(model.context_length), "preprocess": config.get("preprocess"),
            "tokenizer": (config.get("text_cfg") or {}).get("tokenizer"), "embed_dim": int(model.embed_dim)}
    paths["info"].write_text(json.dumps(info, indent=1))
    return paths


@torch.no_grad()
def validate_onnx(model: nn.Module, out_dir: str | Path, tokenizer=None, seed: int = 0) -> dict[str, float]:
    """Max |ONNX - PyTorch| of each tower on a batch of 3 random images / captions (a batch size other than the
    export's, so the dynamic axis is exercised); compare with PARITY_TOLERANCE."""
    import onnxruntime as ort

    from affectclip.data.transforms import create_transforms
    from affectclip.models.factory import get_tokenizer

    model = model.eval().float().cpu()
    out = Path(out_dir)
    tokenizer = tokenizer or get_tokenizer(model)
    size = create_transforms(model).image_size
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(3, size, size, generator=g).expand(3, -1, -1, -1) * torch.rand(3, 1, 1, 1, generator=g)
    tokens = tokenizer(["a nervous laugh", "she looks furious and disgusted at the same time", "calm"])
    diffs = {}
    for name, module, x, file, input_name in (
        ("image", _ImageTower(model), pixels.contiguous(), IMAGE_FILE, "pixels"),
        ("text", _TextTower(model), tokens, TEXT_FILE, "tokens"),
    ):
        if not (out / file).is_file():
            raise FileNotFoundError(f"{out / file} not found; run the export first")
        session = ort.InferenceSession(str(out / file), providers=["CPUExecutionProvider"])
        got = session.run(None, {input_name: x.numpy()})[0]
        diffs[name] = float(np.abs(got - module(x).numpy()).max())
    return diffs
