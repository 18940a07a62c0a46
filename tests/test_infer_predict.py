"""affectclip.load(...).predict/embed on real pixels: skimage's astronaut, a folder with bad files, a short video."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from skimage import data as skimage_data

import affectclip
from affectclip.infer import predictor
from affectclip.models.checkpoint import save_checkpoint
from affectclip.models.factory import create_model
from benchmarks.inference import write_moving_face_video


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    return save_checkpoint(create_model("tiny-vit-wordpiece"), tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def emotion(model_path):
    return affectclip.load(model_path, device="cpu", detector="haar")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


def test_astronaut_gives_one_face_with_a_probability_per_label(emotion, astronaut):
    df = emotion.predict(astronaut)
    assert len(df) == 1 and df.loc[0, "status"] == "ok" and df.loc[0, "face_id"] == 0
    x0, y0, x1, y1 = df.loc[0, ["x0", "y0", "x1", "y1"]]
    assert x0 < 225 < x1 and y0 < 115 < y1  # her face is centred near (225, 115)
    probs = df.loc[0, list(predictor.FERPLUS_LABELS)].to_numpy(float)
    assert probs.sum() == pytest.approx(1.0, abs=1e-6) and (probs > 0).all()
    assert df.loc[0, "top_label"] == predictor.FERPLUS_LABELS[int(probs.argmax())]
    assert df.loc[0, "top_score"] == pytest.approx(probs.max())


def test_probabilities_are_softmax_at_the_model_logit_scale(emotion, astronaut):
    """predict, embed and embed_text agree: p = softmax(s * cos(face, label text)) with s = exp(logit_scale)."""
    labels = ["a calm face", "a furious face", "a joyful face"]
    df = emotion.predict(astronaut, labels=labels, prompts="text")
    meta, emb = emotion.embed(astronaut)
    logits = emotion.logit_scale * emb @ emotion.embed_text(labels).T
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(df[labels].to_numpy(float), expected, atol=1e-5)
    assert emotion.logit_scale == pytest.approx(math.exp(2.6593), rel=1e-4)


def test_folder_keeps_faceless_and_corrupt_files_as_rows(emotion, astronaut, tmp_path):
    from PIL import Image

    (tmp_path / "sub").mkdir()
    Image.fromarray(astronaut).save(tmp_path / "sub" / "face.jpg")
    Image.fromarray(np.full((120, 160, 3), 128, np.uint8)).save(tmp_path / "blank.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg at all")
    (tmp_path / "notes.txt").write_text("ignored: not an image")
    df = emotion.predict(tmp_path)
    by_name = {s.split("/")[-1]: r for s, r in zip(df["source"], df.to_dict("records"), strict=True)}
    assert sorted(by_name) == ["blank.png", "broken.jpg", "face.jpg"]
    assert by_name["face.jpg"]["status"] == "ok"
    assert by_name["blank.png"]["status"] == "no_face" and pd.isna(by_name["blank.png"]["face_id"])
    assert all(math.isnan(by_name["blank.png"][c]) for c in predictor.FERPLUS_LABELS)
    assert by_name["broken.jpg"]["status"].startswith("error:") and "broken.jpg" in by_name["broken.jpg"]["status"]


def test_video_faces_keep_one_id_and_timestamps_increase(emotion, tmp_path):
    video = write_moving_face_video(tmp_path / "clip.mp4", seconds=2.0, fps=10, travel=40, codec="mpeg4")
    df = emotion.predict(video, fps=5.0)
    assert (df["status"] == "ok").all() and (df["media"] == "video").all()
    assert len(df) == 10  # 2 s sampled at 5 fps
    assert df["face_id"].nunique() == 1
    assert np.all(np.diff(df["timestamp"].to_numpy()) > 0) and np.all(np.diff(df["frame"].to_numpy()) > 0)
    summary = emotion.summarize(df)
    assert len(summary) == 1 and summary.loc[0, "n_frames"] == 10
    assert summary.loc[0, "end"] == pytest.approx(df["timestamp"].max())
    meta, emb = emotion.embed(video, fps=5.0)
    clip = meta.index[meta["level"] == "clip"]
    assert len(clip) == 1 and np.linalg.norm(emb[clip[0]]) == pytest.approx(1.0, abs=1e-5)


def test_no_detect_scores_the_whole_image(emotion):
    crop = skimage_data.astronaut()[60:170, 170:280]
    df = emotion.predict([crop], detect_faces=False)
    assert len(df) == 1 and df.loc[0, "status"] == "ok" and df.loc[0, "face_id"] == 0
    assert (df.loc[0, "x1"], df.loc[0, "y1"]) == (110.0, 110.0) and math.isnan(df.loc[0, "det_score"])


@pytest.mark.parametrize(
    ("labels", "prompts", "message"),
    [
        (["happy", "sad", "Happy"], None, "duplicate labels ['Happy', 'happy']"),
        (["happy", " "], None, "positions [1] are empty"),
        (["happy", "status"], None, "collide"),
        (["happy", "sad"], {"happy": ["a happy face"]}, "no prompts for ['sad']"),
        (["happy", "sad"], "no-such-set", "unknown prompt set"),
    ],
)
def test_bad_labels_are_named(emotion, astronaut, labels, prompts, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        emotion.predict(astronaut, labels=labels, prompts=prompts)


def test_load_without_default_model_says_how_to_pass_one(tmp_path, monkeypatch):
    from affectclip.models import default

    monkeypatch.setattr(default, "DEFAULT_MODEL_FILE", tmp_path / "absent.safetensors")
    with pytest.raises(FileNotFoundError, match="no default model is installed.*checkpoint path"):
        affectclip.load()
    with pytest.raises(FileNotFoundError, match="not found"):
        affectclip.load(tmp_path / "typo.safetensors")


def test_cosine_columns_and_temperature_give_rankable_scores(emotion, astronaut):
    """Issue 23: probabilities saturate at the model's temperature; cos_<label> are the raw similarities and a
    temperature T gives softmax(cos / T)."""
    labels = ["a calm face", "a furious face", "a joyful face"]
    meta, emb = emotion.embed(astronaut)
    cos = (emb @ emotion.embed_text(labels).T)[0]
    df = emotion.predict(astronaut, labels=labels, prompts="text", cosine=True, temperature=0.5)
    assert list(df.columns[10:]) == [*labels, *(f"cos_{label}" for label in labels), "top_label", "top_score",
                                     "status"]
    np.testing.assert_allclose(df.loc[0, [f"cos_{label}" for label in labels]].to_numpy(float), cos, atol=1e-5)
    soft = np.exp(cos / 0.5) / np.exp(cos / 0.5).sum()
    np.testing.assert_allclose(df.loc[0, labels].to_numpy(float), soft, atol=1e-5)
    assert predictor.label_columns(df.copy()) == labels  # cos_ columns are not labels, also without attrs
    no_attrs = df.copy()
    no_attrs.attrs = {}
    assert predictor.label_columns(no_attrs) == labels
    with pytest.raises(ValueError, match="temperature"):
        emotion.predict(astronaut, temperature=0.0)


def test_haar_detection_score_is_a_probability(emotion, astronaut):
    """Issue 23: Haar reported the cascade's raw level weight (6.34); every detector's det_score lies in 0-1."""
    score = emotion.predict(astronaut).loc[0, "det_score"]
    assert 0.5 < score < 1.0


def test_default_detector_falls_back_to_haar_saying_so_once(monkeypatch, capsys, astronaut):
    """A plain install has no BlazeFace file: 'default' uses Haar and tells the user, in one line, once."""
    from affectclip.data import faces

    monkeypatch.setattr(faces, "DETECTOR_FILES", {**faces.DETECTOR_FILES,
                                                  "blazeface": ("affectclip_no_such_pkg", "x.tflite", "x==1")})
    monkeypatch.setattr(faces, "_fallback_told", False)
    first, second = faces.get_detector("default"), faces.get_detector()
    assert isinstance(first, faces.HaarDetector) and isinstance(second, faces.HaarDetector)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "haar" in err[0] and "affectclip assets install" in err[0]
    with pytest.raises(FileNotFoundError, match="affectclip assets install"):
        faces.get_detector("blazeface")


def test_blazeface_prints_no_tflite_info_line(capfd, astronaut):
    """Issue 23: every predict printed TFLite's 'Created TensorFlow Lite XNNPACK delegate' INFO line."""
    from affectclip.data.faces import BlazeFaceDetector

    faces = BlazeFaceDetector().detect(astronaut)
    assert len(faces) == 1
    assert "XNNPACK" not in capfd.readouterr().err


def test_progress_bar_over_frames_only_on_a_terminal_and_not_when_quiet(emotion, tmp_path, monkeypatch, capsys):
    from affectclip.core import progress

    video = write_moving_face_video(tmp_path / "clip.mp4", seconds=1.0, fps=10, travel=20, codec="mpeg4")
    monkeypatch.setattr(progress, "shows_progress", lambda quiet=False: not quiet)  # as on a terminal
    emotion.embed(video, fps=5, clips=False)
    assert "frames" in capsys.readouterr().err
    emotion.embed(video, fps=5, clips=False, quiet=True)
    assert capsys.readouterr().err == ""


def test_video_plot_draws_cosines_when_predict_has_them(emotion, tmp_path, monkeypatch):
    """Issue 23: saturated probabilities made a video's plot flat lines; with --cosine the plot draws the
    similarities, which move with the face."""
    import matplotlib.axes

    from affectclip.infer.plots import plot_video

    video = write_moving_face_video(tmp_path / "clip.mp4", seconds=1.0, fps=10, travel=20, codec="mpeg4")
    df = emotion.predict(video, labels=["calm", "joyful"], fps=5, cosine=True)
    drawn = []
    real_plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, x, y, *a, **k: drawn.append(np.asarray(y)) or real_plot(self, x, y, *a, **k))
    plot_video(df, ["calm", "joyful"], tmp_path / "scores.png")
    ok = df[(df["status"] == "ok") & (df["face_id"] == 0)].sort_values("timestamp")
    assert len(ok) >= 3 and len(drawn) >= 2
    np.testing.assert_allclose(drawn[0], ok["cos_calm"].to_numpy(float))
    drawn.clear()
    plot_video(df.drop(columns=["cos_calm", "cos_joyful"]), ["calm", "joyful"], tmp_path / "probs.png")
    np.testing.assert_allclose(drawn[0], ok["calm"].to_numpy(float))
