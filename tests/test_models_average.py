"""`average_checkpoints`, `affectclip average`: a soup of checkpoints of one model; mismatches are named."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from affectclip.cli import main
from affectclip.models.checkpoint import average_checkpoints, save_checkpoint
from affectclip.models.factory import create_model


def _perturbed(model: torch.nn.Module, seed: int, batches: int) -> torch.nn.Module:
    """A copy of `model`: trainable parameters moved by seeded noise, BatchNorm counted `batches`."""
    copy = create_model("tiny-cnn-minilm", external_weights=["text.bert."])
    copy.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in copy.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g))
        for name, buf in copy.named_buffers():
            if name.endswith("num_batches_tracked"):
                buf.fill_(batches)
    return copy


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """Three checkpoints of one tiny CNN + MiniLM model; MiniLM is frozen and left to its package."""
    root = tmp_path_factory.mktemp("soup")
    torch.manual_seed(0)
    base = create_model("tiny-cnn-minilm", external_weights=["text.bert."])
    models = [_perturbed(base, seed, batches) for seed, batches in ((1, 5), (2, 9), (3, 7))]
    paths = [save_checkpoint(m, root / f"m{i}.safetensors", {"epoch": i}) for i, m in enumerate(models)]
    return root, paths, [load_file(str(p)) for p in paths]


def test_uniform_and_weighted_averages_are_exact_and_load_as_a_model(three):
    root, paths, sds = three
    out = average_checkpoints(paths, root / "soup.safetensors")
    soup = load_file(str(out))
    assert soup.keys() == sds[0].keys() and not any(k.startswith("text.bert.") for k in soup)
    for key, value in soup.items():
        if key.endswith("num_batches_tracked"):
            assert value.item() == 9  # BatchNorm's count keeps the largest, it is not averaged
        else:
            expected = (sds[0][key].double() + sds[1][key].double() + sds[2][key].double()) / 3
            torch.testing.assert_close(value, expected.to(value.dtype), atol=1e-6, rtol=0)
    with safe_open(str(out), framework="pt") as handle:
        meta = handle.metadata()
    assert json.loads(meta["averaged_from"]) == [str(p) for p in paths] and meta["epoch"] == "0"
    model = create_model(out).eval()  # a normal checkpoint: config kept, MiniLM rebuilt from its package
    assert torch.isfinite(model.encode_image(torch.rand(2, 3, 64, 64))).all()

    weighted = load_file(str(average_checkpoints(paths[:2], root / "w.safetensors", weights=[3, 1])))
    expected = 0.75 * sds[0]["logit_scale"] + 0.25 * sds[1]["logit_scale"]
    torch.testing.assert_close(weighted["logit_scale"], expected)


def test_mismatches_and_broken_inputs_are_named(three, tmp_path):
    root, paths, sds = three
    with pytest.raises(ValueError, match="at least two"):
        average_checkpoints(paths[:1], tmp_path / "o.safetensors")
    with pytest.raises(ValueError, match="2 weights for 3 checkpoints"):
        average_checkpoints(paths, tmp_path / "o.safetensors", weights=[1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        average_checkpoints(paths[:2], tmp_path / "o.safetensors", weights=[1, -1])
    with pytest.raises(ValueError, match="one of the inputs"):
        average_checkpoints(paths[:2], paths[0])
    other = save_checkpoint(create_model("tiny-vit"), tmp_path / "vit.safetensors")
    with pytest.raises(ValueError, match="vit.safetensors holds a different model config"):
        average_checkpoints([paths[0], other], tmp_path / "o.safetensors")
    plain = tmp_path / "plain.safetensors"
    save_file(sds[0], str(plain))
    with pytest.raises(ValueError, match="plain.safetensors is not an affectclip checkpoint"):
        average_checkpoints([paths[0], plain], tmp_path / "o.safetensors")
    with safe_open(str(paths[1]), framework="pt") as handle:
        meta = handle.metadata()
    nan = tmp_path / "nan.safetensors"
    save_file({**sds[1], "logit_scale": torch.tensor(float("nan"))}, str(nan), metadata=meta)
    with pytest.raises(ValueError, match="nan.safetensors: tensor 'logit_scale' holds NaN"):
        average_checkpoints([paths[0], nan], tmp_path / "o.safetensors")
    short = tmp_path / "short.safetensors"
    save_file({k: v for k, v in sds[1].items() if k != "logit_scale"}, str(short), metadata=meta)
    with pytest.raises(ValueError, match="short.safetensors and .* hold different tensors \\(logit_scale\\)"):
        average_checkpoints([paths[0], short], tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()  # nothing half-written after any refusal


def test_cli_averages_and_refuses_to_overwrite(three, tmp_path, capsys):
    root, paths, _ = three
    out = tmp_path / "soup.safetensors"
    assert main(["average", *map(str, paths), "--output", str(out)]) == 0
    assert f"averaged 3 checkpoints into {out}" in capsys.readouterr().out
    before = out.read_bytes()
    assert main(["average", *map(str, paths[:2]), "--output", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err and out.read_bytes() == before
    gone, fresh = tmp_path / "gone.safetensors", tmp_path / "x.safetensors"
    assert main(["average", str(paths[0]), str(gone), "--output", str(fresh)]) == 2
    assert "not found: " in capsys.readouterr().err
