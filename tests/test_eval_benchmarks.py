"""Benchmark adapters on tiny fake trees mimicking each official layout, and on the real FER+ labels."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from affectclip.data.manifest import read_manifest
from affectclip.eval.benchmarks import BENCHMARKS, get_benchmark, list_benchmarks
from affectclip.eval.prompts import CANONICAL


def touch(root, *rels):
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def write(root, rel, text):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")


def rafdb(root):
    write(root, "EmoLabel/list_patition_label.txt", "train_00001.jpg 1\ntrain_00002.jpg 7\ntest_0001.jpg 4\n")
    return "test", None, ["happiness"], "Image/aligned/test_0001_aligned.jpg"


def rafdb_compound(root):
    write(root, "EmoLabel/list_patition_label.txt", "train_0001.jpg 11\ntest_0001.jpg 1\ntest_0002.jpg 4\n")
    return "test", None, ["happily surprised", "sadly angry"], "Image/aligned/test_0001_aligned.jpg"


def affectnet(k):
    def build(root):
        head = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n"
        rows = "".join(f"1/img{i}.jpg,0,0,1,1,,{e},0,0\n" for i, e in enumerate([0, 1, 7, 8, 10]))
        write(root, "Manually_Annotated_file_lists/validation.csv", head + rows)
        expected = ["neutral", "happy", "contempt"] if k == 8 else ["neutral", "happy"]
        return "test", None, expected, "Manually_Annotated_Images/1/img0.jpg"

    return build


def ferplus(seven):
    def build(root):
        write(
            root,
            "labels.csv",
            "path,label,split\nimages/train/a.png,neutral,train\nimages/valid/b.png,contempt,valid\n"
            "images/valid/c.png,,valid\nimages/valid/d.png,fear,valid\n",
        )
        return (
            "valid",
            None,
            ["fear"] if seven else ["contempt", "fear"],
            "images/valid/d.png" if seven else "images/valid/b.png",
        )

    return build


def fer2013(root):
    write(root, "fer2013.csv", "emotion,pixels,Usage\n0,1 2,Training\n3,1 2,PrivateTest\n6,1 2,PrivateTest\n")
    return "test", None, ["happy", "neutral"], "images/test/fer0000001.png"


def class_folders(split_dir, split, names, ext):
    def build(root):
        touch(root, *[f"{split_dir}/{n}/a{ext}" for n in names[:2]], f"{split_dir}/{names[0]}/b{ext}")
        for n in names[2:]:
            (root / split_dir / n).mkdir(parents=True)
        return split, None, None, f"{split_dir}/{names[0]}/a{ext}"

    return build


def ckplus(root):
    write(root, "Emotion/S005/001/S005_001_00000011_emotion.txt", "   3.0000000e+00\n")
    touch(
        root,
        "cohn-kanade-images/S005/001/S005_001_00000011.png",
        "cohn-kanade-images/S010/002/S010_002_00000001.png",
    )
    return "all", None, ["disgust"], "cohn-kanade-images/S005/001/S005_001_00000011.png"


def codes(files, expected):
    def build(root):
        touch(root, *files, "README.txt")
        return "all", None, expected, files[0]

    return build


def dfew(root):
    write(root, "EmoLabel_DataSplit/test(single-labeled)/set_2.csv", "video_name,label\n1,1\n23,7\n")
    return "test", 2, ["happiness", "fear"], "Clip/clip_224x224/00001"


def ferv39k(root):
    write(
        root,
        "4_setups/All_scenes/test_All.csv",
        "Action/Action_Angry/0001/0005 Angry\nDaily/Daily_Happy/0002/0001 Happy\n",
    )
    return "test", None, ["Angry", "Happy"], "2_ClipsforFaceCrop/Action/Action_Angry/0001/0005"


def mafw(root):
    write(
        root, "Train & Test Set/single/no_caption/set_3/test.txt", "00025.mp4 anger\n00031.mp4 helplessness\n"
    )
    return "test", 3, ["anger", "helplessness"], "data/clips/00025.mp4"


def emotic(root):
    write(root, "val.csv", "Folder,Filename\nmscoco/images,a.jpg\nframes,b.jpg\n")
    np.save(root / "val_cat_arr.npy", np.eye(26)[:2])
    np.save(root / "val_cont_arr.npy", np.full((2, 3), 5.0))
    return "val", None, None, "mscoco/images/a.jpg"


def bold(root):
    row = ["003/clip.mp4", "0", "1", "2", *(["0.6"] + ["0.1"] * 25), "5", "6", "7", "M"]
    write(root, "annotations/val.csv", ",".join(row) + "\n")
    return "val", None, None, "videos/003/clip.mp4"


BUILDERS = {
    "rafdb": rafdb,
    "rafdb_compound": rafdb_compound,
    "affectnet7": affectnet(7),
    "affectnet8": affectnet(8),
    "ferplus": ferplus(False),
    "ferplus7": ferplus(True),
    "fer2013": fer2013,
    "fer2013_folders": class_folders(
        "test", "test", ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"], ".jpg"
    ),
    "sfew": class_folders(
        "Val", "val", ["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"], ".png"
    ),
    "afew": class_folders(
        "Val_AFEW", "val", ["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"], ".avi"
    ),
    "ckplus": ckplus,
    "jaffe": codes(["KA.AN1.39.tiff", "KM.SU2.16.tiff"], ["AN", "SU"]),
    "cremad": codes(["VideoFlash/1001_DFA_ANG_XX.flv", "VideoFlash/1002_IEO_HAP_HI.flv"], ["ANG", "HAP"]),
    "ravdess": codes(
        ["Actor_01/01-01-06-01-02-01-01.mp4", "Actor_02/02-01-01-01-01-01-02.mp4"], ["fearful", "neutral"]
    ),
    "enterface05": codes(
        ["subject 1/anger/sentence 1/s1_an_1.avi", "subject 2/surprise/sentence 3/s2_su_3.avi"],
        ["anger", "surprise"],
    ),
    "dfew": dfew,
    "ferv39k": ferv39k,
    "mafw": mafw,
    "emotic": emotic,
    "bold": bold,
}


def test_every_benchmark_has_a_fake_tree():
    assert set(BUILDERS) == set(BENCHMARKS)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_adapter_reads_fake_layout(name, tmp_path):
    bench = get_benchmark(name)
    split, fold, expected, first_path = BUILDERS[name](tmp_path)
    items = bench.items(tmp_path, split, fold)
    assert items[0].path == first_path and all(it.split == split for it in items)
    if expected is not None:
        assert [bench.classes[it.label] for it in items] == expected
    if bench.continuous:
        assert len(items[0].targets) == len(bench.classes) + 3 and items[0].targets[0] == 1.0
    else:
        assert all(0 <= it.label < len(bench.classes) for it in items)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_missing_folder_or_split_file_names_expected_path(name, tmp_path):
    bench = get_benchmark(name)
    split = bench.splits[-1]
    fold = 1 if bench.folds else None
    with pytest.raises(FileNotFoundError, match="layout"):
        bench.items(tmp_path / "absent", split, fold)
    (tmp_path / "empty").mkdir()
    if name in (
        "jaffe",
        "cremad",
        "ravdess",
        "enterface05",
    ):  # file-code layouts: an empty folder is an empty split
        with pytest.raises(ValueError, match="empty"):
            bench.items(tmp_path / "empty", split, fold)
    else:
        with pytest.raises(FileNotFoundError, match=r"expected .*layout|missing"):
            bench.items(tmp_path / "empty", split, fold)


def test_fold_split_and_label_errors(tmp_path):
    dfew(tmp_path)
    with pytest.raises(ValueError, match="--fold 1..5"):
        get_benchmark("dfew").items(tmp_path, "test")
    with pytest.raises(ValueError, match="splits"):
        get_benchmark("dfew").items(tmp_path, "valid", 1)
    write(tmp_path, "EmoLabel/list_patition_label.txt", "test_0001.jpg 9\n")
    with pytest.raises(ValueError, match="outside"):
        get_benchmark("rafdb").items(tmp_path, "test")
    write(tmp_path, "Train & Test Set/single/no_caption/set_1/test.txt", "00025.mp4 boredom\n")
    with pytest.raises(ValueError, match="unknown mafw class 'boredom'"):
        get_benchmark("mafw").items(tmp_path, "test", 1)


def test_bad_rows_are_left_out_and_reported_not_fatal(tmp_path):
    """One bad row of an official list file (unknown label, too few fields) no longer ends the evaluation."""
    write(tmp_path, "EmoLabel/list_patition_label.txt", "test_0001.jpg 1\ntest_0002.jpg 9\ntest_0003.jpg\n"
          "test_0004.jpg 7\ntrain_0001.jpg\ntrain_0002.jpg 2\n")
    items = get_benchmark("rafdb").items(tmp_path, "test")
    assert [it.label for it in items if not it.error] == [0, 6]
    errors = [it.error for it in items if it.error]
    assert len(errors) == 2 and "line 2" in errors[0] and "outside" in errors[0] and "line 3" in errors[1]
    out, skipped = get_benchmark("rafdb").to_manifest(tmp_path, "test", tmp_path / "m.jsonl")
    assert len(read_manifest(out, check_files=False)) == 2 and [s["error"] for s in skipped] == errors
    assert len([it for it in get_benchmark("rafdb").items(tmp_path, "train") if it.error]) == 1  # its own split


def test_prompt_names_are_canonical():
    for name in ("rafdb", "affectnet8", "ferv39k", "sfew", "jaffe", "cremad", "fer2013"):
        assert set(get_benchmark(name).prompt_names) <= set(CANONICAL), name
    assert get_benchmark("ravdess").prompt_names[1] == "calm"
    listing = {b["name"]: b for b in list_benchmarks()}
    assert listing["dfew"]["folds"] == 5 and "EmoLabel_DataSplit" in listing["dfew"]["layout"]


def test_manifest_export(tmp_path):
    split, fold, _, _ = emotic(tmp_path)
    out, skipped = get_benchmark("emotic").to_manifest(tmp_path, split, tmp_path / "m.jsonl", fold)
    assert skipped == []
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert (
        rows[0]["targets"]["Affection"] == 1.0
        and rows[0]["targets"]["valence"] == 5.0
        and "label" not in rows[0]
    )


def test_manifest_from_a_relative_root_resolves_from_anywhere(tmp_path, monkeypatch):
    """`eval run --root ../data --output elsewhere/`: the manifest (written under --output) must not keep the root
    relative to the working directory, or no file of the split is found."""
    split, fold, _, first = ferplus(False)(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    out, _ = get_benchmark("ferplus").to_manifest("data", split, tmp_path / "results" / "manifests" / "m.jsonl",
                                                  fold)
    monkeypatch.chdir(tmp_path / "results")
    manifest = read_manifest(out, check_files=False, allow_outside=True)  # benchmark rows name --root
    assert manifest.resolve(manifest.records[0]["path"]) == (tmp_path / "data" / first).resolve()


def test_ferplus_real_counts_match_reference(ferplus_dir):
    """evaluation.md §2.4: majority-rule counts of the real FER+ train/valid splits."""
    ref = {
        "train": [8733, 7284, 3136, 3022, 2098, 116, 536, 120],
        "valid": [1180, 862, 411, 348, 289, 25, 60, 16],
    }
    bench = get_benchmark("ferplus")
    for split, counts in ref.items():
        got = collections.Counter(it.label for it in bench.items(ferplus_dir, split))
        assert [got[i] for i in range(8)] == counts
    seven = get_benchmark("ferplus7").items(ferplus_dir, "valid")
    assert len(seven) == sum(ref["valid"]) - 16


def test_alternative_release_layouts(tmp_path):
    """Spellings used by public loaders: MAE-DFER's MAFW split/ + data/frames/, EmoCLIP's AFEW_Face crops,
    EmotionCLIP's BoLD mmextract/ frames; FERV39k lists carry class names, not indices."""
    write(tmp_path / "mafw", "split/single/no_caption/set_2/test.txt", "00025.mp4 anger\n00031.mp4 contempt\n")
    (tmp_path / "mafw" / "data" / "frames" / "00025").mkdir(parents=True)
    items = get_benchmark("mafw").items(tmp_path / "mafw", "test", 2)
    assert [it.path for it in items] == ["data/frames/00025", "data/frames/00031"] and items[1].label == 7
    touch(tmp_path / "afew", *[f"AFEW_Face/validation/{c}/0_1/f.png" for c in
                               ("Anger", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise")])
    afew = get_benchmark("afew")
    assert sorted(afew.classes[it.label] for it in afew.items(tmp_path / "afew", "val")) == sorted(afew.classes)
    bold(tmp_path / "bold")
    (tmp_path / "bold" / "mmextract" / "003" / "clip.mp4").mkdir(parents=True)
    assert get_benchmark("bold").items(tmp_path / "bold", "val")[0].path == "mmextract/003/clip.mp4"
    write(tmp_path / "ferv", "4_setups/All_scenes/test_All.csv", "Action/Action_Angry/0001/0005 3\n")
    with pytest.raises(ValueError, match="unknown ferv39k class '3'"):
        get_benchmark("ferv39k").items(tmp_path / "ferv", "test")
