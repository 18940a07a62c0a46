"""Face detectors on a real photo, alignment geometry, subject masks, IoU tracking and the `data faces|frames` CLI."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from affectclip.data.faces import Face, align_crop, align_matrix, boxes_to_mask, get_detector
from affectclip.data.tracking import IoUTracker

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


def test_mtcnn_matches_facenet_reference_on_astronaut(astronaut):
    faces = get_detector("mtcnn").detect(astronaut)
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].box, [181.1, 62.2, 267.7, 172.1], atol=0.5)
    assert faces[0].score > 0.999 and faces[0].landmarks.shape == (5, 2)
    left, right = faces[0].landmarks[:2]
    assert left[0] < right[0]


@pytest.mark.parametrize("name", ["haar", "blazeface"])
def test_other_detectors_find_the_same_face(astronaut, name):
    faces = get_detector(name).detect(astronaut)
    assert len(faces) == 1
    box = np.asarray(faces[0].box)
    centre = (box[:2] + box[2:]) / 2
    np.testing.assert_allclose(centre, [224.4, 117.2], atol=15)  # centre of the MTCNN box


def test_detectors_find_nothing_in_a_blank_image():
    blank = np.full((120, 160, 3), 128, np.uint8)
    for name in ("haar", "blazeface", "mtcnn"):
        assert get_detector(name).detect(blank) == []


def test_bad_image_and_unknown_detector_raise():
    with pytest.raises(ValueError, match="RGB uint8"):
        get_detector("haar").detect(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="unknown face detector"):
        get_detector("yolo")


def test_align_crop_levels_the_eye_line():
    eyes = np.array([[40.0, 60.0], [80.0, 80.0]], np.float32)  # tilted by atan(20/40)
    face = Face((30, 40, 90, 110), 1.0, eyes)
    m = align_matrix(face, size=112)
    mapped = (m[:, :2] @ eyes.T).T + m[:, 2]
    assert mapped[0, 1] == pytest.approx(mapped[1, 1], abs=1e-6)
    assert mapped[0, 0] < mapped[1, 0]
    img = np.zeros((150, 150, 3), np.uint8)
    for x, y in eyes.astype(int):
        img[y - 2 : y + 3, x - 2 : x + 3] = 255
    crop = align_crop(img, face, size=112)
    ys, xs = np.nonzero(crop[..., 0] > 128)
    assert crop.shape == (112, 112, 3) and ys.max() - ys.min() < 12  # both dots on one row band


def test_align_crop_without_landmarks_is_a_square_box_crop():
    img = np.zeros((100, 100, 3), np.uint8)
    img[20:60, 30:70] = 200
    crop = align_crop(img, Face((30, 20, 70, 60), 1.0), size=48, margin=0.0)
    assert crop.shape == (48, 48, 3) and crop[2:-2, 2:-2].min() == 200


def test_boxes_to_mask_union_clipping_and_score_threshold():
    mask = boxes_to_mask([[0, 0, 4, 4], [2, 2, 12, 6], [5, 5, 9, 9, 0.3]], height=8, width=10)
    assert mask.dtype == bool and mask.shape == (8, 10)
    assert mask[:4, :4].all() and mask[2:6, 2:10].all() and not mask[7, 7]
    assert mask.sum() == 16 + 32 - 4
    with pytest.raises(ValueError, match="box 0"):
        boxes_to_mask([[0, 0, np.nan, 1]], 4, 4)


def test_tracker_keeps_ids_of_moving_faces_and_never_reuses_ids():
    tracker = IoUTracker(iou_threshold=0.3, max_missed=1)
    a, b = np.array([0, 0, 20, 20.0]), np.array([50, 50, 70, 70.0])
    assert tracker.update([a, b]) == [0, 1]
    for step in range(1, 6):  # both move 3 px per frame, listed in swapped order
        assert tracker.update([b + 3 * step, a + 3 * step]) == [1, 0]
    assert tracker.update([a + 18]) == [0]  # b disappears
    assert tracker.update([a + 18]) == [0]
    assert tracker.update([a + 18, b + 15]) == [0, 2]  # b back after max_missed: new id, 1 is not reused


def _write_video(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _cli(argv: list[str]) -> int:
    from affectclip.data.media_commands import add_media_commands

    parser = argparse.ArgumentParser()
    add_media_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_faces_command_writes_crops_and_lists_faceless_inputs(astronaut, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    small = np.asarray(Image.fromarray(astronaut).resize((256, 256)))
    Image.fromarray(small).save(src / "sub" / "astro.png")
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(src / "blank.png")
    _write_video(tmp_path / "clip.mp4", [small] * 6)
    out = tmp_path / "out"
    rc = _cli(
        [
            "faces",
            str(src),
            str(tmp_path / "clip.mp4"),
            str(out),
            "--detector",
            "blazeface",
            "--size",
            "64",
            "--fps",
            "5",
        ]
    )
    assert rc == 0
    rows = list(csv.DictReader(open(out / "faces.csv")))
    by_source = {}
    for r in rows:
        by_source.setdefault(Path(r["source"]).name, []).append(r)
    assert [r["face_id"] for r in by_source["blank.png"]] == [""]
    assert by_source["astro.png"][0]["face_id"] == "0"
    video_rows = by_source["clip.mp4"]
    assert [r["frame"] for r in video_rows] == ["0", "2", "4"] and {r["face_id"] for r in video_rows} == {"0"}
    crops = sorted(p.name for p in (out / "clip").glob("*.jpg"))
    assert crops == ["000000_0.jpg", "000002_0.jpg", "000004_0.jpg"]
    assert Image.open(out / "clip" / crops[0]).size == (64, 64)


def test_frames_command_counts_bad_files_and_fails(tmp_path):
    _write_video(tmp_path / "ok.mp4", [np.full((32, 32, 3), 100, np.uint8)] * 10)
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)
    rc = _cli(
        ["frames", str(tmp_path / "ok.mp4"), str(tmp_path / "bad.mp4"), str(tmp_path / "out"), "--fps", "5"]
    )
    assert rc == 1
    assert len(list((tmp_path / "out" / "ok").glob("*.jpg"))) == 5
    report = (tmp_path / "out" / "failed.txt").read_text()
    assert "bad.mp4" in report and "ok.mp4" not in report
