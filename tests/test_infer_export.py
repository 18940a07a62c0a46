"""`affectclip export --onnx`: two tower graphs that onnxruntime runs with the same outputs as PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from affectclip.cli import main
from affectclip.infer.predictor import load
from affectclip.models.checkpoint import save_checkpoint
from affectclip.models.factory import create_model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    return str(save_checkpoint(create_model("tiny-vit-wordpiece"), tmp_path_factory.mktemp("m") / "tiny.safetensors"))


def test_export_validates_parity_and_onnx_matches_the_python_api(model_path, tmp_path, capsys):
    import onnxruntime as ort
    from skimage import data as skimage_data

    out = tmp_path / "onnx"
    assert main(["export", "--model", model_path, "--onnx", str(out)]) == 0
    printed = capsys.readouterr().out
    diffs = [float(line.split("= ")[1].split()[0]) for line in printed.splitlines() if line.startswith("parity")]
    assert len(diffs) == 2 and max(diffs) <= 1e-4
    info = json.loads((out / "affectclip_onnx.json").read_text())
    assert info["opset"] >= 17 and info["image_size"] == 64

    # The graphs, fed with the library's own preprocessing and tokenizer, reproduce embed_text / embed.
    model = load(model_path, device="cpu")
    texts = ["a nervous laugh", "happiness"]
    text = ort.InferenceSession(str(out / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    got = text.run(None, {"tokens": model.tokenizer(texts).numpy()})[0]
    np.testing.assert_allclose(got, model.embed_text(texts), atol=1e-4)
    crop = skimage_data.astronaut()[40:200, 140:300]
    image = ort.InferenceSession(str(out / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    got = image.run(None, {"pixels": model.transform(crop)[None].numpy()})[0]
    _, emb = model.embed([crop], detect_faces=False)
    np.testing.assert_allclose(got, emb, atol=1e-4)


def test_export_rejects_old_opsets(model_path, tmp_path, capsys):
    assert main(["export", "--model", model_path, "--onnx", str(tmp_path), "--opset", "13"]) == 2
    assert "opset must be >= 17" in capsys.readouterr().err
