"""Hostile and broken checkpoint files, generated here, through every loader: `create_model`, `affectclip.load`,
`affectclip predict --model` and `affectclip eval run --model` (in-process). Each must end in a one-line
`UserError` (exit code 2) naming the file, and nothing in a file may run: payloads that would create a marker file
outside the test's folder must leave no marker."""

from __future__ import annotations

import json
import pickle
from typing import Tuple  # noqa: UP035 (TorchScript needs typing.Tuple)

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

import affectclip
from affectclip.cli import main
from affectclip.core.errors import UserError
from affectclip.models.checkpoint import CONFIG_KEY, load_state_dict, save_checkpoint
from affectclip.models.factory import create_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:Detected pickle protocol",
                                        "ignore::torch.jit.TracerWarning")


class _Payload:
    """Unpickling this calls open(marker, 'w'): a file appears if the loader executes pickled code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _ScriptedSetstate(nn.Module):
    """torch.jit.load runs this scripted __setstate__, which creates (or overwrites) `marker` with from_file."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(2))
        self.marker = marker

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, str, bool]:  # noqa: UP006
        return (self.weight, self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, str, bool]) -> None:  # noqa: UP006
        self.marker = state[1]
        self.training = state[2]
        self.weight = state[0] + torch.from_file(self.marker, shared=True, size=2) * 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight


def _tiny_safetensors(path, mutate_tensors=None, mutate_config=None):
    model = create_model("tiny-vit")
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    config = json.loads(json.dumps(model.config))
    if mutate_tensors:
        mutate_tensors(tensors)
    if mutate_config:
        mutate_config(config)
    save_file(tensors, str(path), metadata={CONFIG_KEY: json.dumps(config), "format": "pt"})
    return path


def _set(section, key, value):
    def mutate(config):
        (config[section] if section else config)[key] = value
    return mutate


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """A folder outside each test's own: payload markers point here, and it must stay empty."""
    return tmp_path_factory.mktemp("outside")


def _hostile_files(folder, outside):
    files = {}
    files["pickle_payload.pt"] = folder / "pickle_payload.pt"
    with open(files["pickle_payload.pt"], "wb") as fh:
        pickle.dump({"model": {"w": _Payload(str(outside / "pickle_marker"))}}, fh)
    files["torch_save_payload.pt"] = folder / "torch_save_payload.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Payload(str(outside / "torch_marker"))},
               files["torch_save_payload.pt"])
    files["torchscript_setstate.pt"] = folder / "torchscript_setstate.pt"
    torch.jit.script(_ScriptedSetstate(str(outside / "jit_marker"))).save(str(files["torchscript_setstate.pt"]))
    valid = folder / "valid.pt"
    torch.save(create_model("tiny-vit").state_dict(), valid)
    files["truncated.pt"] = folder / "truncated.pt"
    files["truncated.pt"].write_bytes(valid.read_bytes()[: valid.stat().st_size // 2])
    files["empty.pt"] = folder / "empty.pt"
    files["empty.pt"].write_bytes(b"")

    def nan(t):
        t["visual.proj"][0, 0] = float("nan")

    def nan_scale(t):
        t["logit_scale"] = torch.tensor(float("inf"))

    def int8(t):
        t["visual.conv1.weight"] = t["visual.conv1.weight"].to(torch.int8)

    def extra(t):
        t["visual.extra.weight"] = torch.zeros(3)

    def missing(t):
        del t["text.ln_final.bias"]

    files["nan_weights.safetensors"] = _tiny_safetensors(folder / "nan_weights.safetensors", nan)
    files["inf_logit_scale.safetensors"] = _tiny_safetensors(folder / "inf_logit_scale.safetensors", nan_scale)
    files["int8_weights.safetensors"] = _tiny_safetensors(folder / "int8_weights.safetensors", int8)
    files["extra_key.safetensors"] = _tiny_safetensors(folder / "extra_key.safetensors", extra)
    files["missing_key.safetensors"] = _tiny_safetensors(folder / "missing_key.safetensors", missing)
    files["embed_dim_1e9.safetensors"] = _tiny_safetensors(folder / "embed_dim_1e9.safetensors", None,
                                                           _set(None, "embed_dim", 10**9))
    files["width_1e9.safetensors"] = _tiny_safetensors(folder / "width_1e9.safetensors", None,
                                                       _set("vision_cfg", "width", 10**9))
    files["layers_1e7.safetensors"] = _tiny_safetensors(folder / "layers_1e7.safetensors", None,
                                                        _set("text_cfg", "layers", 10**7))
    files["external_everything.safetensors"] = _tiny_safetensors(
        folder / "external_everything.safetensors", lambda t: [t.pop(k) for k in list(t) if k != "logit_scale"],
        _set(None, "external_weights", ["visual.", "text."]))
    files["other_architecture.pt"] = folder / "other_architecture.pt"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)},
               files["other_architecture.pt"])
    return files


EXPECTED = {  # what the one-line message must say besides the file name
    "pickle_payload.pt": "weights_only", "torch_save_payload.pt": "weights_only",
    "torchscript_setstate.pt": "state dict", "truncated.pt": "truncated", "empty.pt": "cannot read",
    "nan_weights.safetensors": "visual.proj", "inf_logit_scale.safetensors": "logit_scale",
    "int8_weights.safetensors": "visual.conv1.weight", "extra_key.safetensors": "visual.extra.weight",
    "missing_key.safetensors": "text.ln_final.bias", "embed_dim_1e9.safetensors": "embed_dim",
    "width_1e9.safetensors": "vision_cfg.width", "layers_1e7.safetensors": "text_cfg.layers",
    "external_everything.safetensors": "external_weights", "other_architecture.pt": "conv1.weight",
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, outside):
    return _hostile_files(tmp_path_factory.mktemp("hostile"), outside)


def test_the_torchscript_payload_is_real(tmp_path):
    """The scripted __setstate__ does create its file when torch.jit.load runs it (so the tests below mean it)."""
    path = tmp_path / "proof.pt"
    torch.jit.script(_ScriptedSetstate(str(tmp_path / "proof_marker"))).save(str(path))
    torch.jit.load(str(path))
    assert (tmp_path / "proof_marker").exists()


def _one_line(message: str, name: str) -> None:
    assert "\n" not in message.strip() and name in message and EXPECTED[name] in message, message


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_create_model_and_load_refuse_with_one_line(hostile, outside, name):
    for loader in (create_model, affectclip.load):
        with pytest.raises(UserError) as err:
            loader(hostile[name])
        _one_line(str(err.value), name)
    assert not any(outside.iterdir()), f"{name} created {list(outside.iterdir())}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cli_predict_and_eval_exit_2_with_one_line(hostile, outside, name, tmp_path, capsys):
    image = tmp_path / "face.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(image)
    manifest = tmp_path / "eval.jsonl"
    manifest.write_text(json.dumps({"path": str(image), "caption": "a face"}) + "\n")
    runs = [["predict", str(image), "--model", str(hostile[name]), "--out", str(tmp_path / "p.csv"), "--no-detect"],
            ["eval", "run", "--model", str(hostile[name]), "--manifest", str(manifest), "--task", "retrieval",
             "--output", str(tmp_path / "results")]]
    for argv in runs:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        _one_line(err, name)
    assert not any(outside.iterdir())
    assert not (tmp_path / "p.csv").exists()


def test_openai_style_torchscript_still_loads_without_running_code(tmp_path):
    model = create_model("tiny-vit").eval()
    scripted = tmp_path / "openai.pt"
    torch.jit.trace_module(model, {"encode_image": (torch.randn(1, 3, 64, 64),)}).save(str(scripted))
    # tiny-vit's head counts and activation are not OpenAI's (no weight records them): given as overrides
    loaded = create_model(scripted, quick_gelu=False, vision_cfg={"head_width": 32}, text_cfg={"heads": 2}).eval()
    images, tokens = torch.rand(2, 3, 64, 64), torch.tensor([[49406, 320, 49407] + [0] * 74])
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images), model.encode_image(images), atol=1e-6, rtol=0)
        torch.testing.assert_close(loaded.encode_text(tokens), model.encode_text(tokens), atol=1e-6, rtol=0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_checkpoints_never_give_a_traceback(tmp_path, data):
    """Random truncations and byte flips of valid .pt/.safetensors/TorchScript files: loaded, or a CheckpointError."""
    if not hasattr(test_damaged_checkpoints_never_give_a_traceback, "valid"):
        model = create_model("tiny-vit")
        pt, st_path, ts = tmp_path / "v.pt", tmp_path / "v.safetensors", tmp_path / "ts.pt"
        torch.save({"model": model.state_dict()}, pt)
        save_checkpoint(model, st_path)
        torch.jit.script(_ScriptedSetstate(str(tmp_path / "never"))).save(str(ts))
        test_damaged_checkpoints_never_give_a_traceback.valid = [p.read_bytes() for p in (pt, st_path, ts)]
    blobs = test_damaged_checkpoints_never_give_a_traceback.valid
    index = data.draw(st.integers(0, len(blobs) - 1))
    blob = bytearray(blobs[index])
    cut = data.draw(st.integers(0, len(blob)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(blob) - 1), st.integers(0, 255)), max_size=4))
    for pos, value in flips:
        blob[pos] = value
    target = tmp_path / ("damaged.safetensors" if index == 1 else "damaged.pt")
    target.write_bytes(bytes(blob[:cut]))
    try:
        load_state_dict(target)
    except UserError as exc:
        assert "\n" not in str(exc) and "damaged" in str(exc)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("name", ["torchscript_setstate.pt", "pickle_payload.pt", "nan_weights.safetensors"])
def test_search_refuses_the_model_an_index_names(hostile, outside, name, tmp_path, capsys):
    """`search` loads the model path stored in an index's JSON: a hostile file there is refused the same way."""
    import pandas as pd

    from affectclip.infer.predictor import save_embeddings

    meta = pd.DataFrame({"source": ["a.png"], "level": ["face"], "status": ["ok"]})
    index = save_embeddings(meta, np.ones((1, 64), np.float32), tmp_path / "index.npy", str(hostile[name]))[0]
    assert main(["search", str(index), "a nervous laugh"]) == 2
    _one_line(capsys.readouterr().err.strip(), name)
    assert not any(outside.iterdir())


_TINY_CONFIG_KEYS = [("vision_cfg", k) for k in ("image_size", "patch_size", "width", "layers", "head_width",
                                                 "mlp_ratio")] + [("text_cfg", k) for k in (
    "context_length", "vocab_size", "width", "heads", "layers")] + [(None, "embed_dim")]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(_TINY_CONFIG_KEYS),
       value=st.one_of(st.sampled_from([0, 1, -1, 3, 10**9]), st.integers(-10, 10**12), st.floats(allow_nan=True, allow_infinity=True), st.none(),
                       st.text(max_size=5), st.lists(st.integers(), max_size=2)))
def test_any_value_in_a_checkpoint_config_loads_or_is_one_line(tmp_path, target, value):
    """A checkpoint's stored config is untrusted: any value of any size key builds, or is one UserError line
    naming the file; nothing is allocated for absurd sizes (the bounds are checked first)."""
    path = _tiny_safetensors(tmp_path / "fuzz.safetensors", None, _set(*target, value))
    try:
        create_model(path)
    except UserError as exc:
        assert "\n" not in str(exc) and "fuzz.safetensors" in str(exc)
