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


@pytest.fixture(scope="module")
def default_export(tmp_path_factory):
    """The shipped model (MiniLM text tower) exported once through the command line."""
    out = tmp_path_factory.mktemp("default") / "onnx"
    assert main(["export", "--onnx", str(out), "--no-validate"]) == 0
    return out


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_shipped_text_encoder_has_a_dynamic_batch(default_export, batch):
    """Issue 23: text_encoder.onnx of the shipped model had its batch fixed to 2 (batch 1 failed in onnxruntime,
    batch 3 returned 2 rows), even under --no-validate."""
    import onnxruntime as ort

    model = load(None, device="cpu")
    texts = ["a nervous laugh", "happiness", "calm", "she looks furious and disgusted " * 10, "fear"][:batch]
    session = ort.InferenceSession(str(default_export / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"tokens": model.tokenizer(texts).numpy()})[0]
    np.testing.assert_allclose(got, model.embed_text(texts), atol=1e-4)


def test_failed_export_leaves_nothing_behind(model_path, tmp_path, monkeypatch, capsys):
    from affectclip.infer import export

    monkeypatch.setattr(export, "validate_onnx", lambda *a, **k: {"image": 0.0, "text": 0.5})
    out = tmp_path / "onnx"
    assert main(["export", "--model", model_path, "--onnx", str(out)]) == 1
    assert "differs from PyTorch" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_export_refuses_a_graph_with_a_fixed_batch(model_path, tmp_path, monkeypatch, capsys):
    """A tower traced with its batch baked in is an error even with --no-validate, and nothing is written."""
    from affectclip.infer import export

    real = export._export
    monkeypatch.setattr(export, "_export", lambda module, example, path, name, opset: torch_export_fixed(
        real, module, example, path, name, opset))
    out = tmp_path / "onnx"
    assert main(["export", "--model", model_path, "--onnx", str(out), "--no-validate"]) == 1
    assert "fixed batch" in capsys.readouterr().err and list(out.iterdir()) == []


def torch_export_fixed(real, module, example, path, input_name, opset):
    """Export like the broken version did: no dynamic axes."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=["embedding"],
                          opset_version=opset, dynamo=False)
