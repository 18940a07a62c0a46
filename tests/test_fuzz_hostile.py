"""Fuzz suite for hostile input (issue 24): the data commands, `predict`, `embed` and `search` run in-process through
`affectclip.cli.main` over crafted hostile files (generated here, never committed) and hypothesis-generated
manifests. Every run must end with exit 0/1/2 and, for 2, one line on stderr (no traceback: any other exception
fails the test), and create no file outside its output folder (the whole tmp tree and a sentinel beside the work
folder are snapshotted)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from affectclip.cli import main

FACE = np.tile(np.arange(0, 240, 15, dtype=np.uint8)[None, :, None], (16, 1, 3))
NON_UTF8 = os.fsdecode(b"odd-\xff\xfe.png")
SECRET = png_bytes(255 - FACE)  # an image outside the data folder: its bytes must never reach a shard


def _run_confined(root: Path, out: Path, argv: list[str], capsys) -> int:
    """Run the CLI; assert the exit status contract and that only `out` changed under `root`."""
    before = {k: v for k, v in tree_snapshot(root).items() if not (root / k).is_relative_to(out)}
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert rc in (0, 1, 2), (argv, rc)
    assert "Traceback" not in captured.err, captured.err
    if rc == 2:
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("affectclip ") and "error" in lines[0], captured.err
    after = {k: v for k, v in tree_snapshot(root).items() if not (root / k).is_relative_to(out)}
    assert after == before, (argv, sorted(set(after) ^ set(before)))
    return rc


@pytest.fixture(scope="module")
def arena(tmp_path_factory):
    """root/sentinel.txt beside root/work/in: a folder of hostile media, manifests, shards and a FER+ folder."""
    root = tmp_path_factory.mktemp("arena")
    (root / "sentinel.txt").write_text("do not touch")
    (root / "secret.png").write_bytes(SECRET)
    media = root / "work" / "in" / "media"
    media.mkdir(parents=True)
    (media / "ok.png").write_bytes(png_bytes(FACE))
    (media / "bomb.png").write_bytes(png_bomb())
    (media / "big.png").write_bytes(png_bomb(10_000, 10_000))
    (media / "cut.png").write_bytes(png_bytes(FACE)[:50])
    (media / "empty.png").write_bytes(b"")
    (media / "garbage.jpg").write_bytes(b"\xff\xd8\xff" + os.urandom(200))
    write_png16(media / "deep.png")
    write_float_tiff(media / "float.tif")
    (media / "...png").write_bytes(png_bytes(FACE))
    (media / NON_UTF8).write_bytes(png_bytes(FACE))
    write_video(media / "...mp4")
    (media / "cut.mp4").write_bytes((media / "...mp4").read_bytes()[:300])
    (media / "garbage.mp4").write_bytes(os.urandom(500))
    (media / "empty.mp4").write_bytes(b"")
    frames = media / "frames_inf"
    frames.mkdir()
    (frames / "000000.png").write_bytes(png_bytes(FACE))
    (frames / "frames.json").write_text('{"fps": 1e400}')
    return root


# ------------------------------------------------------------------------------------------ data commands


@pytest.mark.parametrize("command", ["frames", "faces"])
def test_media_commands_over_a_hostile_folder(arena, command, capsys, tmp_path):
    out = arena / "work" / f"out-{command}-{tmp_path.name}"
    extra = ["--detector", "haar"] if command == "faces" else []
    rc = _run_confined(arena, out, ["data", command, arena / "work" / "in" / "media", out, *extra], capsys)
    assert rc == 1  # some inputs are unreadable: listed, counted, the rest done
    failed = (out / "failed.txt").read_text()
    assert "garbage.mp4" in failed and "cut.mp4" in failed
    if command == "faces":
        assert "bomb.png" in failed and "refused" in failed


def _manifest_arena(root: Path) -> Path:
    data = root / "work" / "in" / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "ok.png").write_bytes(png_bytes(FACE))
    (data / "bomb.png").write_bytes(png_bomb())
    if not (data / "link.png").is_symlink():
        (data / "link.png").symlink_to(root / "sentinel.txt")
        (data / "secret-link.png").symlink_to(root / "secret.png")
    return data


def _assert_nothing_from_outside(out: Path) -> None:
    for tar in out.glob("*.tar"):
        body = tar.read_bytes()
        assert b"do not touch" not in body and SECRET not in body and b"root:" not in body, tar


HOSTILE_ROWS = [
    {"path": "ok.png", "label": "a"},
    {"path": "../../../../../../etc/passwd", "label": "a"},
    {"path": "/etc/passwd", "label": "a"},
    {"path": "link.png", "label": "a"},
    {"path": "bomb.png", "label": "a"},
    {"path": 5, "label": []},
    {"path": "ok.png", "soft_label": ["NaN"]},
    {"path": "ok.png", "label": "a", "start": 2, "end": 1},
    {"path": "ok.png", "caption": {"global": 3}},
]


@pytest.mark.parametrize("form", ["jsonl", "csv-bom", "csv-quote", "parquet", "not-utf8", "jsonl-nan", "outside"])
def test_data_check_and_shard_over_hostile_manifests(arena, form, capsys, tmp_path):
    data = _manifest_arena(arena)
    suffix = {"csv-bom": ".csv", "csv-quote": ".csv", "parquet": ".parquet"}.get(form, ".jsonl")
    path = data / f"m-{form}-{tmp_path.name}{suffix}"
    if form == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in HOSTILE_ROWS) + "{broken\n[1, 2]\n")
    elif form == "outside":  # image rows only, each leading out another way
        rows = [{"path": p, "label": "a"} for p in ["ok.png", "secret-link.png", "../../../secret.png",
                                                    str(arena / "secret.png")]]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif form == "jsonl-nan":
        path.write_text('{"path": "ok.png", "label": "a", "start": NaN}\n{"path": "ok.png", "sentiment": [1e400]}\n')
    elif form == "not-utf8":
        path.write_bytes(b'{"path": "ok\xff.png", "label": "a"}\n')
    elif form == "csv-bom":
        path.write_bytes(b"\xef\xbb\xbfpath,label,soft_label\nok.png,a,\"[1, 2]\"\n../x.png,a,\nbomb.png,a,[nan]\n")
    elif form == "csv-quote":
        path.write_text('path,label,caption\nok.png,a,"open quote\nok.png,b,swallowed\n')
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"path": [1, 2], "label": [[1.5], None]}), path)
    out = arena / "work" / f"out-shard-{form}-{tmp_path.name}"
    _run_confined(arena, out, ["data", "check", path], capsys)
    rc = _run_confined(arena, out, ["data", "shard", path, out], capsys)
    _assert_nothing_from_outside(out)
    assert rc == 2  # every one of these manifests has a bad row: shard refuses it, naming the row


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
FIELDS = ["path", "label", "caption", "split", "id", "start", "end", "soft_label", "votes", "sentiment", "targets",
          "boxes", "mask", "labels", "meta", "fold"]
rows = st.lists(st.dictionaries(st.sampled_from(FIELDS), json_values | st.sampled_from(
    ["ok.png", "../ok.png", "/etc/hostname", "link.png", "secret-link.png", "bomb.png", "."]), max_size=6),
    min_size=0, max_size=4)


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=rows)
def test_fuzzed_manifests_never_traceback_or_escape(arena, records, capsys):
    data = _manifest_arena(arena)
    with tempfile.TemporaryDirectory(dir=arena / "work") as scratch:
        path = Path(scratch) / "m.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        out = Path(scratch) / "out"
        check = _run_confined(arena, Path(scratch), ["data", "check", path], capsys)
        shard = _run_confined(arena, Path(scratch), ["data", "shard", path, out], capsys)
        _assert_nothing_from_outside(out)
        if check == 0:  # data check passed: every row is readable, inside the folder, and packs
            assert shard == 0
        if shard == 0:
            from affectclip.data.shards import ShardDataset

            samples = list(ShardDataset(out))
            assert len(samples) == len(records)
        assert data.is_dir()


@settings(max_examples=20, deadline=None, database=None)
@given(payload=st.binary(max_size=300), suffix=st.sampled_from([".png", ".jpg", ".gif", ".tif", ".webp", ".mp4"]))
def test_fuzzed_image_bytes_are_a_counted_bad_sample(payload, suffix):
    from affectclip.data.datasets import ManifestDataset, collate

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        (folder / f"x{suffix}").write_bytes(payload)
        (folder / "ok.png").write_bytes(png_bytes(FACE))
        (folder / "m.jsonl").write_text(json.dumps({"path": f"x{suffix}", "label": 0}) + "\n"
                                        + json.dumps({"path": "ok.png", "label": 0}) + "\n")
        ds = ManifestDataset(folder / "m.jsonl")
        batch = collate([ds[0], ds[1]])
        assert len(batch["errors"]) + len(batch.get("label", [])) == 2 and len(batch["label"]) >= 1


@settings(max_examples=20, deadline=None, database=None)
@given(names=st.lists(st.sampled_from(["../a.png", "/abs.png", "ok.png", "ok.json", "b.png", "b.json", "c.mask.png",
                                       "d/../../e.png", "f.json"]), max_size=6),
       json_body=st.binary(max_size=40))
def test_fuzzed_shards_stream_counted_errors(names, json_body):
    from affectclip.data.shards import ShardDataset

    with tempfile.TemporaryDirectory() as scratch:
        members = [(n, json_body if n.endswith(".json") else png_bytes(FACE)) for n in names]
        shard = tar_with(Path(scratch) / "s.tar", members)
        for sample in ShardDataset([shard], classes=["a"]):
            assert ("error" in sample) != ("image" in sample)
        huge = tar_declaring_huge_member(Path(scratch) / "h.tar")
        assert all("error" in s for s in ShardDataset([huge]))


@pytest.mark.parametrize("index", ["{", "[]", '{"shards": [{"name": "/etc/passwd", "count": 1}]}',
                                   '{"shards": [{"name": "s.tar", "count": 1e400}]}', '{"shards": "x"}'])
def test_a_malformed_shard_index_is_one_line(index, tmp_path):
    from affectclip.core.errors import UserError
    from affectclip.data.shards import ShardDataset

    (tmp_path / "index.json").write_text(index)
    tar_with(tmp_path / "s.tar", [("a.png", png_bytes(FACE))])
    with pytest.raises(UserError, match="index.json"):
        ShardDataset(tmp_path)


@pytest.mark.parametrize("labels", [
    b"path,split,neutral\n",
    b"\xef\xbb\xbfpath,split," + b",".join(c.encode() for c in [
        "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF"])
    + b"\n../../etc/passwd,train,10,0,0,0,0,0,0,0,0,0\n",
    b"path,split,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
    b"a.png,train,nan,0,0,0,0,0,0,0,0,0\n",
    b"path,split,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
    b"\"a.png,train,1,0,0,0,0,0,0,0,0,0\n",
    b"\xff\xfe\x00garbage",
])
def test_data_ferplus_over_broken_label_files(arena, labels, capsys, tmp_path):
    folder = arena / "work" / "in" / f"ferplus-{tmp_path.name}"
    folder.mkdir(parents=True)
    (folder / "labels.csv").write_bytes(labels)
    out = arena / "work" / f"out-ferplus-{tmp_path.name}"
    assert _run_confined(arena, out, ["data", "ferplus", folder, out / "m.jsonl"], capsys) == 2


# ------------------------------------------------------------------------------------------ inference


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    import torch

    from affectclip.models.checkpoint import save_checkpoint
    from affectclip.models.factory import create_model

    torch.manual_seed(0)
    return save_checkpoint(create_model("tiny-vit-wordpiece"), tmp_path_factory.mktemp("m") / "tiny.safetensors")


def test_predict_and_embed_over_a_hostile_folder_keep_every_row(arena, model_path, capsys):
    import pandas as pd

    out = arena / "work" / "out-predict"
    media = arena / "work" / "in" / "media"
    rc = _run_confined(arena, out, ["predict", media, "--model", model_path, "--no-detect", "--labels", "a,b",
                                    "--out", out / "p.csv"], capsys)
    assert rc == 0
    table = pd.read_csv(out / "p.csv")
    status = dict(zip(table["source"].map(lambda s: Path(s).name), table["status"], strict=False))
    assert status["ok.png"] == "ok" and status["deep.png"] == "ok" and status["float.tif"] == "ok"
    assert status["bomb.png"].startswith("error") and status["garbage.mp4"].startswith("error")
    assert any(name.startswith("odd-") and value == "ok" for name, value in status.items())
    rc = _run_confined(arena, out, ["embed", media, "--model", model_path, "--no-detect", "--out", out / "e.npy"],
                       capsys)
    assert rc == 0 and (out / "e.json").is_file()


@pytest.mark.parametrize("argv", [
    ["predict", "{media}", "--out", "{work}"],               # --out names a folder
    ["predict", "{media}", "--out", "{sentinel}/x.csv"],     # --out under a file
    ["embed", "{media}", "--out", "{work}/in"],              # a folder without a known suffix
    ["predict", "{media}", "--plot", "{sentinel}"],          # --plot names a file
])
def test_bad_output_paths_fail_before_any_work(arena, model_path, argv, capsys, monkeypatch):
    import affectclip.infer.predictor as predictor

    monkeypatch.setattr(predictor, "load", lambda *a, **k: pytest.fail("the model was loaded before the check"))
    names = {"media": arena / "work" / "in" / "media", "work": arena / "work", "sentinel": arena / "sentinel.txt"}
    args = [a.format(**names) for a in argv] + ["--model", str(model_path)]
    assert _run_confined(arena, arena / "work" / "never", args, capsys) == 2


@pytest.mark.parametrize("sidecar", ["{", "[]", '{"affectclip_index": 3, "rows": []}', '{"rows": [{"source": 1}]}',
                                     '{"affectclip_index": {"model": "", "embed_dim": 4}, "rows": "x"}'])
def test_search_with_a_malformed_index_is_one_line(arena, model_path, sidecar, capsys, tmp_path):
    index = tmp_path / "e.npy"
    np.save(index, np.zeros((1, 4), np.float32))
    (tmp_path / "e.json").write_text(sidecar)
    rc = _run_confined(arena, tmp_path, ["search", index, "a smile", "--model", model_path], capsys)
    assert rc == 2
    (tmp_path / "p.parquet").write_bytes(b"PAR1garbagePAR1")
    assert _run_confined(arena, tmp_path, ["search", tmp_path / "p.parquet", "x", "--model", model_path], capsys) == 2


def test_broken_labels_file_and_synthetic_sizes_are_one_line(arena, model_path, capsys, tmp_path):
    (tmp_path / "labels.txt").write_bytes(b"\xff\xfe bad\n")
    media = arena / "work" / "in" / "media"
    assert _run_confined(arena, tmp_path, ["predict", media, "--model", model_path,
                                           "--labels-file", tmp_path / "labels.txt"], capsys) == 2
    assert _run_confined(arena, tmp_path, ["data", "synthetic", tmp_path / "s", "--image-size", "0"], capsys) == 2


def test_eval_run_reads_a_manifest_outside_only_when_allowed(arena, model_path, capsys, tmp_path):
    media = arena / "work" / "in" / "media"
    rows = [{"path": str(media / "ok.png"), "caption": "a face"}, {"path": str(media / "deep.png"), "caption": "deep"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["eval", "run", "--model", model_path, "--manifest", tmp_path / "m.jsonl", "--task", "retrieval",
            "--output", tmp_path / "out"]
    assert _run_confined(arena, tmp_path, argv, capsys) == 2
    assert _run_confined(arena, tmp_path, [*argv, "--allow-outside"], capsys) == 0
