"""ONNX export of the image and text towers as two separate graphs, plus a parity check against PyTorch.

Towers are exported separately (tc-clip #11, open_clip #186): a deployment embeds a gallery of images once and
texts once, and the two graphs have different inputs (pixels vs token ids). Each graph outputs L2-normalised
embeddings, so ONNX users compute `exp(logit_scale) · image @ text.T` themselves; `logit_scale`, the preprocessing
and the tokenizer kind are written to `affectclip_onnx.json` next to the graphs.

The TorchScript-based exporter (`dynamo=False`) is used: it handles the towers' data-dependent EOT pooling
(`argmax`) and dynamic batch axes without extra shape annotations, and needs no onnxscript.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from affectclip.core.errors import RunError

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


PARITY_BATCHES = (1, 2, 5)  # checked against PyTorch: a graph whose batch was baked in at export fails at 1 or 5
_PARITY_TEXTS = ["a nervous laugh", "she looks furious and disgusted at the same time, " * 8, "calm",
                 "happiness", "a face frozen between surprise and fear"]


def _export(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python-side shape checks; parity is verified after
        torch.onnx.export(
            module, (example,), str(path), input_names=[input_name], output_names=["embedding"],
            dynamic_axes={input_name: {0: "batch"}, "embedding": {0: "batch"}}, opset_version=opset, dynamo=False,
        )


@contextlib.contextmanager
def _traceable(model: nn.Module):
    """Switch off what the tracer would bake in as constants: a text tower's memo of sentence vectors (a Python
    dict lookup, traced as fixed rows, hence a fixed batch) is bypassed while exporting."""
    cached = [(m, m.cache_size) for m in model.modules() if hasattr(m, "cache_size") and hasattr(m, "_cache")]
    for m, _ in cached:
        m.cache_size = 0
    try:
        yield
    finally:
        for m, size in cached:
            m.cache_size = size


def _check_dynamic_batch(path: Path, input_name: str) -> None:
    """The graph's input and output batch axes must be symbolic; a fixed one means the export is broken."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    for value in (*[i for i in graph.input if i.name == input_name], *graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        if not dim.dim_param:
            raise RunError(f"{path.name}: '{value.name}' has a fixed batch of {dim.dim_value} instead of a dynamic "
                           "one; the tower cannot be traced as it is (please report this model config)")


@torch.no_grad()
def export_onnx(
    model: nn.Module, out_dir: str | Path, tokenizer=None, opset: int = OPSET, validate: bool = True
) -> tuple[dict[str, Path], dict[str, float]]:
    """Write `image_encoder.onnx` (input `pixels` float [B,3,S,S], already preprocessed), `text_encoder.onnx`
    (input `tokens` int64 [B,L] from the model's tokenizer) and `affectclip_onnx.json`; returns their paths and,
    with `validate`, each tower's max |ONNX - PyTorch| over batches of 1, 2 and 5 (`validate_onnx`).

    The files are written to a temporary folder first and moved into `out_dir` only when both graphs have dynamic
    batch axes and (with `validate`) match PyTorch within PARITY_TOLERANCE: a failed export leaves nothing behind
    (RunError), and `out_dir` never holds half an export."""
    from affectclip.data.transforms import create_transforms
    from affectclip.models.factory import get_tokenizer

    if opset < 17:
        raise ValueError(f"opset must be >= 17 (LayerNormalization), got {opset}")
    model = model.eval().float().cpu()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer or get_tokenizer(model)
    size = create_transforms(model).image_size
    names = {"image": IMAGE_FILE, "text": TEXT_FILE, "info": INFO_FILE}
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
        staged = {key: Path(tmp) / name for key, name in names.items()}
        # the long caption fills the whole context, so any data-dependent trimming of padding is a no-op when traced
        example = tokenizer(["a happy face", _PARITY_TEXTS[1] * 8])
        with _traceable(model):
            _export(_ImageTower(model), torch.zeros(2, 3, size, size), staged["image"], "pixels", opset)
            _export(_TextTower(model), example, staged["text"], "tokens", opset)
        _check_dynamic_batch(staged["image"], "pixels")
        _check_dynamic_batch(staged["text"], "tokens")
        diffs = validate_onnx(model, tmp, tokenizer) if validate else {}
        if diffs and max(diffs.values()) > PARITY_TOLERANCE:
            worst = max(diffs, key=diffs.get)
            raise RunError(f"the ONNX {worst} tower differs from PyTorch by {diffs[worst]:.3g} "
                           f"(tolerance {PARITY_TOLERANCE:g}); nothing was written to {out}")
        config = getattr(model, "config", {})
        info = {"opset": opset, "logit_scale": float(model.logit_scale.exp()), "image_size": size,
                "context_length": int(model.context_length), "preprocess": config.get("preprocess"),
                "tokenizer": (config.get("text_cfg") or {}).get("tokenizer"), "embed_dim": int(model.embed_dim)}
        staged["info"].write_text(json.dumps(info, indent=1))
        paths = {}
        for key, src in staged.items():
            paths[key] = out / names[key]
            os.replace(src, paths[key])
    return paths, diffs


@torch.no_grad()
def validate_onnx(model: nn.Module, out_dir: str | Path, tokenizer=None, seed: int = 0) -> dict[str, float]:
    """Max |ONNX - PyTorch| of each tower over batches of 1, 2 and 5 random images / captions of different
    lengths (one fills the whole context), so a batch or length baked in at export shows up; compare with
    PARITY_TOLERANCE."""
    import onnxruntime as ort

    from affectclip.data.transforms import create_transforms
    from affectclip.models.factory import get_tokenizer

    model = model.eval().float().cpu()
    out = Path(out_dir)
    tokenizer = tokenizer or get_tokenizer(model)
    size = create_transforms(model).image_size
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(5, 3, size, size, generator=g) * torch.rand(5, 1, 1, 1, generator=g)
    tokens = tokenizer(_PARITY_TEXTS)
    diffs = {}
    for name, module, x, file, input_name in (
        ("image", _ImageTower(model), pixels, IMAGE_FILE, "pixels"),
        ("text", _TextTower(model), tokens, TEXT_FILE, "tokens"),
    ):
        if not (out / file).is_file():
            raise FileNotFoundError(f"{out / file} not found; run the export first")
        session = ort.InferenceSession(str(out / file), providers=["CPUExecutionProvider"])
        worst = 0.0
        for batch in PARITY_BATCHES:
            try:
                got = session.run(None, {input_name: x[:batch].numpy()})[0]
            except Exception as exc:  # noqa: BLE001 — onnxruntime raises its own types; report them as a failed check
                raise RunError(f"onnxruntime cannot run {file} at batch {batch}: {exc}") from exc
            want = module(x[:batch]).numpy()
            if got.shape != want.shape:
                raise RunError(f"{file} returns {got.shape} at batch {batch}, PyTorch {want.shape}")
            worst = max(worst, float(np.abs(got - want).max()))
        diffs[name] = worst
    return diffs
