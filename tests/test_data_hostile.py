"""Hostile and broken data inputs (issue 24): no write outside OUT, no read outside the manifest's folder unless
allowed, one bad sample never ends a job, decompression bombs refused before decoding, high-bit-depth images
decoded by their range, strict manifests, output paths checked before the work."""

from __future__ import annotations

import io
import json
import tarfile
import tracemalloc

import numpy as np
import pytest
from hostile_files import (
    png_bomb,
    png_bytes,
    tar_declaring_huge_member,
    tar_with,
    tree_snapshot,
    write_float_tiff,
    write_png16,
    write_video,
)

from affectclip.cli import main
from affectclip.core.errors import UserError
from affectclip.core.images import ImageDecodeError, decode_grey, decode_rgb
from affectclip.core.outputs import check_output_dir, check_output_file, output_path, safe_relative_name
from affectclip.data.datasets import ManifestDataset
from affectclip.data.manifest import ManifestError, read_manifest
from affectclip.data.shards import ShardDataset, read_index
from affectclip.data.video import VideoError, probe

FACE = np.tile(np.arange(0, 240, 15, dtype=np.uint8)[None, :, None], (16, 1, 3))


def _rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------------------ writes stay in OUT


@pytest.mark.parametrize("name", ["...mp4", "..mp4"])
def test_data_frames_on_a_dot_dot_named_video_writes_only_inside_out(tmp_path, name):
    """`...mp4` has the stem `..`: its frames and frames.json went to OUT's parent, overwriting a file there."""
    work = tmp_path / "work"
    (work / "in").mkdir(parents=True)
    write_video(work / "in" / name)
    (work / "frames.json").write_text("precious")
    before = tree_snapshot(tmp_path)
    assert main(["data", "frames", str(work / "in" / name), str(work / "out")]) == 0
    after = tree_snapshot(tmp_path)
    new = sorted(set(after) - set(before))
    assert new and all(p.startswith("work/out/") for p in new), new
    assert (work / "frames.json").read_text() == "precious"
    frames = json.loads(next((work / "out").rglob("frames.json")).read_text())
    assert len(frames["frames"]) == 6


def test_data_faces_on_a_dot_dot_named_image_writes_only_inside_out(tmp_path):
    from skimage import data as skimage_data

    (tmp_path / "in").mkdir()
    from PIL import Image

    Image.fromarray(skimage_data.astronaut()).save(tmp_path / "in" / "...png", format="PNG")
    before = tree_snapshot(tmp_path)
    assert main(["data", "faces", str(tmp_path / "in" / "...png"), str(tmp_path / "out"), "--detector", "haar"]) == 0
    new = sorted(set(tree_snapshot(tmp_path)) - set(before))
    assert "out/faces.csv" in new and any(p.endswith(".jpg") for p in new), new
    assert all(p.startswith("out/") for p in new), new


def test_output_names_from_inputs_are_confined():
    assert safe_relative_name("..") == "__" and safe_relative_name("a/../b") == "a/__/b"
    assert safe_relative_name("/etc/passwd") == "_/etc/passwd" and safe_relative_name(".") == "_"
    assert output_path("/data/out", "...", "x") == output_path("/data/out", "...", "x")
    assert str(output_path("/data/out", "a/../../b", "x")).startswith("/data/out/")


def test_output_paths_checked_before_any_work(tmp_path, monkeypatch):
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        check_output_dir(a_file, "OUT")
    with pytest.raises(UserError, match="is a file"):
        check_output_dir(a_file / "sub", "OUT")
    with pytest.raises(UserError, match="is a folder"):
        check_output_file(tmp_path, "--out")
    assert check_output_file(tmp_path / "new" / "r.csv", "--out") == tmp_path / "new" / "r.csv"
    assert not (tmp_path / "new").exists()  # checking creates nothing

    import affectclip.data.video as video

    monkeypatch.setattr(video, "extract_frames", lambda *a, **k: pytest.fail("decoded before checking OUT"))
    write_video(tmp_path / "v.mp4")
    assert main(["data", "frames", str(tmp_path / "v.mp4"), str(a_file)]) == 2


def test_an_unwritable_output_folder_is_one_line_before_the_work(tmp_path, monkeypatch, capsys):
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # root ignores permission bits; simulate a read-only mount
    assert main(["data", "frames", str(tmp_path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot write into" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ reads stay in the manifest's folder


@pytest.fixture
def outside_manifest(tmp_path):
    """A data folder whose manifest names a good image, a `..` path, an absolute path and a symlink leading out."""
    data, secret = tmp_path / "data", tmp_path / "secret"
    data.mkdir(), secret.mkdir()
    (data / "ok.png").write_bytes(png_bytes(FACE))
    (secret / "shadow.png").write_bytes(png_bytes(255 - FACE))
    (data / "link.png").symlink_to(secret / "shadow.png")
    return _rows(data / "m.jsonl", [
        {"path": "ok.png", "label": "a"},
        {"path": "../secret/shadow.png", "label": "b"},
        {"path": str(secret / "shadow.png"), "label": "b"},
        {"path": "link.png", "label": "b"},
    ])


def test_data_check_and_data_shard_agree_on_files_outside(outside_manifest, tmp_path, capsys):
    assert main(["data", "check", str(outside_manifest)]) == 1
    out = capsys.readouterr().out
    for row in (2, 3, 4):
        assert f"row {row}, path:" in out and "outside the manifest's folder" in out
    assert "row 1" not in out
    assert main(["data", "shard", str(outside_manifest), str(tmp_path / "shards")]) == 2
    err = capsys.readouterr().err
    assert "row 2" in err and "--allow-outside" in err and len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "shards").glob("*.tar"))  # nothing of the secret was packed

    assert main(["data", "check", str(outside_manifest), "--allow-outside"]) == 0
    assert main(["data", "shard", str(outside_manifest), str(tmp_path / "shards"), "--allow-outside"]) == 0
    assert len(list(ShardDataset(tmp_path / "shards"))) == 4


def test_manifest_dataset_refuses_rows_outside_unless_allowed(outside_manifest):
    with pytest.raises(ManifestError, match=r"row 2, field 'path'.*\(3 such paths in all\)"):
        ManifestDataset(outside_manifest)
    ds = ManifestDataset(outside_manifest, allow_outside=True)
    assert float(ds[1]["image"].mean()) == pytest.approx(1 - float(ds[0]["image"].mean()), abs=1e-6)
    manifest = read_manifest(outside_manifest, check_files=False, allow_outside=True)
    assert manifest.split("x").allow_outside  # splits keep the user's choice


def test_shard_members_with_escaping_names_are_refused_and_counted(tmp_path):
    good = png_bytes(FACE)
    meta = json.dumps({"label": "a"}).encode()
    shard = tar_with(tmp_path / "s.tar", [
        ("ok.png", good), ("ok.json", meta),
        ("../evil.png", good), ("../evil.json", meta),
        ("/abs.png", good), ("/abs.json", meta),
        ("ok2.png", good), ("ok2.json", meta),
    ])
    samples = list(ShardDataset([shard], classes=["a"]))
    assert [("error" in s) for s in samples] == [False, True, True, False]
    assert "'..' name" in samples[1]["error"] and "absolute" in samples[2]["error"]


def test_oversize_shard_members_are_refused_from_the_header(tmp_path):
    samples = list(ShardDataset([tar_declaring_huge_member(tmp_path / "huge.tar")]))
    assert samples and all("error" in s for s in samples)
    assert "6,442,450,944 bytes" in samples[0]["error"]  # refused by its header, not read

    shard = tmp_path / "s.tar.gz"  # a gzip tar: 4 MB of zeros compress to a few KB
    with tarfile.open(shard, "w:gz") as tar:
        for name, data in [("a.png", png_bytes(FACE)), ("b.png", png_bytes(FACE)), ("b.json", bytes(4 * 2**20))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert shard.stat().st_size < 2**16
    ds = ShardDataset([shard])
    ds.max_member_bytes = 2**20
    tracemalloc.start()
    first, second = list(ds)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "error" not in first and "over the 1,048,576-byte limit" in second["error"]
    assert peak < 2**20  # the 4 MB member was never read


def test_bad_json_members_and_labels_are_counted_not_fatal(tmp_path):
    good = png_bytes(FACE)
    shard = tar_with(tmp_path / "s.tar", [
        ("a.png", good), ("a.json", b"{not json"),
        ("b.png", good), ("b.json", json.dumps({"label": "martian"}).encode()),
        ("c.png", good), ("c.json", json.dumps({"label": "a", "soft_label": ["x"]}).encode()),
        ("d.png", good), ("d.json", json.dumps({"label": "a", "soft_label": [1e400]}).replace("Infinity", "1e400")
                          .encode()),
        ("e.png", png_bomb()), ("e.json", json.dumps({"label": "a"}).encode()),
        ("f.png", good), ("f.json", json.dumps({"label": "a"}).encode()),
    ])
    samples = list(ShardDataset([shard], classes=["a"]))
    errors = [s.get("error", "") for s in samples]
    assert "invalid JSON" in errors[0] and "martian" in errors[1] and "soft_label" in errors[2]
    assert "soft_label" in errors[3] and "refused" in errors[4] and errors[5] == ""
    assert all(s["path"].endswith(k) for s, k in zip(samples[:5], "abcde", strict=True))


@pytest.mark.parametrize("index, match", [
    ("{broken", "not valid JSON"),
    (json.dumps({"shards": [{"name": "../x.tar", "count": 1}]}), "outside"),
    (json.dumps({"shards": [{"name": "s.tar", "count": "many"}]}), r"shards\[0\]"),
    (json.dumps({"shards": [{"name": "s.tar", "count": 1}], "classes": [1, 2]}), "'classes'"),
    (json.dumps([1, 2]), "'shards' list"),
])
def test_a_malformed_index_json_is_named(tmp_path, index, match):
    (tmp_path / "index.json").write_text(index)
    with pytest.raises(UserError, match=match) as info:
        read_index(tmp_path)
    assert "index.json" in str(info.value)


# ------------------------------------------------------------------------------------------ image decoding


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb())
    (tmp_path / "big.png").write_bytes(png_bomb(10_000, 10_000))  # under PIL's own limit, over ours
    tracemalloc.start()
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_rgb(bomb)
    with pytest.raises(ImageDecodeError, match="declares 10000x10000 pixels"):
        decode_rgb(tmp_path / "big.png")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10 * 2**20
    _rows(tmp_path / "m.jsonl", [{"path": "bomb.png", "label": "a"}, {"path": "ok.png", "label": "a"}])
    (tmp_path / "ok.png").write_bytes(png_bytes(FACE))
    assert read_manifest(tmp_path / "m.jsonl", strict=False).problems[0].row == 1
    ds = ManifestDataset(tmp_path / "m.jsonl")
    assert "refused" in ds[0]["error"] and "image" in ds[1]  # one bad sample, the job goes on


def test_16_bit_png_and_float_tiff_decode_by_their_range(tmp_path):
    values = write_png16(tmp_path / "deep.png")
    rgb = decode_rgb(tmp_path / "deep.png")
    assert rgb.shape == (32, 64, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb[:, :, 0].astype(int) - np.round(values / 257.0)).max() <= 1
    assert (rgb == 255).mean() < 0.01  # PIL's convert("RGB") saturated ~99 % of these pixels

    floats = write_float_tiff(tmp_path / "f.tif")
    grey = decode_grey(tmp_path / "f.tif")
    assert np.abs(grey.astype(int) - np.round(floats * 255)).max() <= 1 and grey.max() == 255


def test_empty_and_truncated_images_are_one_line_errors(tmp_path):
    from affectclip.data.faces import _check_image
    from affectclip.infer.media import to_rgb_uint8

    with pytest.raises(ValueError, match="empty"):
        to_rgb_uint8(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        _check_image(np.zeros((0, 5, 3), np.uint8))
    (tmp_path / "cut.png").write_bytes(png_bytes(FACE)[:60])
    with pytest.raises(ImageDecodeError, match="cut.png"):
        decode_rgb(tmp_path / "cut.png")


def test_predict_discovery_finds_tif_and_gif_and_keeps_non_utf8_names(tmp_path):
    import os

    from PIL import Image

    from affectclip.infer.media import discover, iter_item_frames

    Image.fromarray(FACE).save(tmp_path / "a.tif")
    Image.fromarray(FACE).save(tmp_path / "b.gif")
    odd = os.fsdecode(b"c-\xff.png")
    (tmp_path / odd).write_bytes(png_bytes(FACE))
    items = discover(tmp_path)
    assert [i.path.name for i in items] == ["a.tif", "b.gif", odd]
    assert items[2].source.endswith("c-\\xff.png")
    items[2].source.encode("utf-8")  # writable to the CSV at the end
    assert next(iter_item_frames(items[2], None))[2].shape == (16, 16, 3)


# ------------------------------------------------------------------------------------------ manifest parsing


def test_csv_with_a_bom_reads_and_an_unterminated_quote_fails(tmp_path, capsys):
    (tmp_path / "ok.png").write_bytes(png_bytes(FACE))
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfpath,label\nok.png,happy\n")
    assert main(["data", "check", str(tmp_path / "bom.csv")]) == 0
    (tmp_path / "quote.csv").write_text('path,label,caption\nok.png,happy,"a smiling\nok.png,sad,a frown\n')
    assert main(["data", "check", str(tmp_path / "quote.csv")]) == 2
    err = capsys.readouterr().err
    assert "quote.csv" in err and "malformed CSV" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps({"path": "ok.png", "label": 1}).encode())
    assert read_manifest(tmp_path / "bom.jsonl").records[0]["label"] == 1


@pytest.mark.parametrize("fps", ["1e400", "NaN", "-3", "\"fast\"", "true"])
def test_frames_json_with_a_non_finite_fps_is_one_line(tmp_path, fps):
    (tmp_path / "000000.png").write_bytes(png_bytes(FACE))
    (tmp_path / "frames.json").write_text(f'{{"fps": {fps}, "frames": []}}')
    with pytest.raises(VideoError, match="frames.json.*'fps'"):
        probe(tmp_path)


def test_full_disk_leaves_no_truncated_table(tmp_path, monkeypatch):
    import pandas as pd

    from affectclip.infer.commands import write_table

    def half_then_full(self, path, **kwargs):
        with open(path, "w") as f:
            f.write("source,score\nhalf")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_full)
    with pytest.raises(OSError):
        write_table(pd.DataFrame({"source": ["a"], "score": [1.0]}), tmp_path / "out.csv")
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_tar_without_index_is_one_line(tmp_path):
    (tmp_path / "bad.tar").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(UserError, match="bad.tar"):
        _ = ShardDataset([tmp_path / "bad.tar"]).counts
    assert tarfile  # the module under test reads with tarfile


def test_data_shard_refuses_exactly_what_data_check_reports(tmp_path, capsys):
    """`data check` flagged a decompression bomb while `data shard` packed it: the two now read the same problems."""
    (tmp_path / "ok.png").write_bytes(png_bytes(FACE))
    (tmp_path / "bomb.png").write_bytes(png_bomb())
    manifest = _rows(tmp_path / "m.jsonl", [{"path": "ok.png", "label": "a"}, {"path": "bomb.png", "label": "a"}])
    assert main(["data", "check", str(manifest)]) == 1
    assert "row 2, path: cannot read this image" in capsys.readouterr().out
    assert main(["data", "shard", str(manifest), str(tmp_path / "shards")]) == 2
    err = capsys.readouterr().err
    assert "row 2, path" in err and len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "shards").glob("*.tar"))


def test_numbers_from_a_manifest_are_checked_finite_and_in_range(tmp_path):
    """A label index of 10^30 passed the schema and then overflowed int64 in `collate`, ending the job."""
    rows = [{"path": "a.png", "label": 10**30}, {"path": "a.png", "label": -5}, {"path": "a.png", "fold": 2**40},
            {"path": "a.png", "label": 1, "start": 1e400}, {"path": "a.png", "label": 1, "soft_label": [float("nan")]},
            {"path": "a.png", "label": 1}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems = read_manifest(tmp_path / "m.jsonl", check_files=False, strict=False).problems
    assert [(p.row, p.field) for p in problems] == [(1, "label"), (2, "label"), (3, "fold"), (4, "start"),
                                                    (5, "soft_label")]


def test_parquet_columns_json_cannot_store_are_row_problems(tmp_path, capsys):
    """A Parquet timestamp column passed `data check` and then crashed `data shard` with a TypeError traceback."""
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.png").write_bytes(png_bytes(FACE))
    pq.write_table(pa.table({"path": ["a.png"], "label": ["x"], "when": [datetime.datetime(2020, 1, 1)]}),
                   tmp_path / "m.parquet")
    assert main(["data", "check", str(tmp_path / "m.parquet")]) == 1
    assert "row 1, when: value cannot be stored as JSON" in capsys.readouterr().out
    assert main(["data", "shard", str(tmp_path / "m.parquet"), str(tmp_path / "out")]) == 2
    shard = tar_with(tmp_path / "s.tar", [("a.png", png_bytes(FACE)), ("a.json", b'{"label": "x", "index": 1e30}'),
                                          ("b.png", png_bytes(FACE)), ("b.json", b'{"label": "x", "index": ' +
                                                                        str(10**30).encode() + b"}")])
    from affectclip.data.datasets import collate

    batch = collate(list(ShardDataset([shard], classes=["x"])))
    assert batch["index"].tolist() == [0, 1]  # absurd stored indices fall back to the stream position


def test_a_video_declaring_oversize_frames_is_refused_before_decoding(tmp_path, monkeypatch):
    import affectclip.core.images as images
    from affectclip.data.video import iter_frames

    video = write_video(tmp_path / "v.mp4", size=(32, 24))
    assert probe(video).width == 32
    monkeypatch.setattr(images, "MAX_PIXELS", 32 * 24 - 1)
    with pytest.raises(VideoError, match="declare 32x24 pixels"):
        next(iter_frames(video))
