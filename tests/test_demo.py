"""`affectclip demo` — the embedded default job — trains and beats chance clearly, writing its artefacts."""

from __future__ import annotations

import json

import affectclip
from affectclip.cli import main


def test_demo_trains_and_zero_shot_beats_chance(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "-o", str(out), "run.progress=false"])  # the demo exactly as a user runs it (~70 s on CPU)
    assert rc == 0
    printed = capsys.readouterr().out
    assert "WAR (accuracy)" in printed and "UAR" in printed
    result = json.loads((out / "demo_result.json").read_text())
    assert result["n_samples"] == 512
    assert result["uar"] > 3 * 12.5, f"zero-shot UAR {result['uar']:.1f} is not well above chance (12.5)"
    assert (out / "confusion_matrix.png").stat().st_size > 5000
    model = affectclip.create_model(out / "model.safetensors")  # the checkpoint is self-describing
    assert model.config["vision_cfg"]["type"] == "small_cnn"
