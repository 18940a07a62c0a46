"""`affectclip eval run --manifest`: any labelled manifest is a benchmark; records never collide; bad input in eval
is counted or refused up front; progress and retrieval numbers are printed."""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

import affectclip
from affectclip.cli import build_parser, main
from affectclip.eval.results import build_table, make_record, write_record
from affectclip.models.checkpoint import save_checkpoint

CLASSES = ("happy", "sad", "angry")


@pytest.fixture(autouse=True)
def _bpe(bpe_path, monkeypatch):
    monkeypatch.setenv("AFFECTCLIP_BPE_PATH", str(bpe_path))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A saved tiny model: fixed weights, so features are cached and record ids reproducible across runs."""
    return save_checkpoint(affectclip.create_model("tiny-vit"), tmp_path_factory.mktemp("model") / "tiny.safetensors")


def write_manifest(root, splits=(("train", 4), ("test", 2)), extra=()):
    """Images of CLASSES with captions; `n` per class per split; `extra` rows appended as given."""
    rng = np.random.default_rng(0)
    rows = []
    for split, n in splits:
        for c in CLASSES:
            for i in range(n):
                rel = f"img/{split}_{c}_{i}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / rel)
                rows.append({"path": rel, "label": c, "split": split, "caption": f"a {c} face number {i}"})
    rows += list(extra)
    path = root / "faces.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def records(out):
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


def run(args, out, ckpt):
    return main(["eval", "run", "--model", str(ckpt), "--output", str(out), "--batch-size", "4", *args])


def test_retrieval_honours_split(tmp_path, ckpt, capsys):
    """Failed before: `--split test` scored every row and recorded `split: test`; retrieval printed `{}`."""
    m = write_manifest(tmp_path)
    assert run(["--manifest", str(m), "--task", "retrieval", "--split", "test"], tmp_path / "out", ckpt) == 0
    (rec,) = records(tmp_path / "out")
    assert rec["split"] == "test" and rec["metrics"]["n_items"] == 6 and rec["metrics"]["n_texts"] == 6
    printed = json.loads(capsys.readouterr().out.splitlines()[0])
    assert printed["text_to_item.R@1"] == pytest.approx(rec["metrics"]["text_to_item"]["R@1"], abs=0.01)
    assert {"item_to_text.R@5", "text_to_item.median_rank"} <= set(printed)


def test_manifest_zeroshot_classes_from_labels_and_split_syntax(tmp_path, ckpt, capsys):
    m = write_manifest(tmp_path)
    assert run(["--manifest", f"{m}:train", "--task", "zeroshot"], tmp_path / "out", ckpt) == 0
    (rec,) = records(tmp_path / "out")
    assert rec["split"] == "train" and rec["n_samples"] == 12 and rec["classes"] == sorted(CLASSES)
    assert rec["benchmark"] == "faces" and rec["data"]["eval"] == str(m.resolve())
    assert sum(map(sum, rec["metrics"]["confusion_matrix"])) == 12
    assert "faces train: 12 samples encoded in" in capsys.readouterr().err  # the summary line after encoding
    # without a split: the manifest's test split; --classes fixes the order (and so the confusion matrix rows)
    assert run(["--manifest", str(m), "--classes", "sad,happy,angry"], tmp_path / "o2", ckpt) == 0
    (rec,) = records(tmp_path / "o2")
    assert rec["split"] == "test" and rec["n_samples"] == 6 and rec["classes"] == ["sad", "happy", "angry"]
    assert rec["prompts"]["sad"] and rec["failures"]["count"] == 0
    capsys.readouterr()
    assert run(["--manifest", str(m), "--quiet"], tmp_path / "o3", ckpt) == 0
    assert capsys.readouterr().err == ""
    assert run(["--manifest", f"{m}:nope"], tmp_path / "o4", ckpt) == 2
    assert "no rows with split 'nope'" in capsys.readouterr().err


def test_progress_bar_on_a_terminal_only(tmp_path, ckpt, capsys, monkeypatch):
    """Failed before: minutes of silence while encoding. A bar on a terminal; none with --quiet or in logs."""
    import affectclip.core.progress as progress

    m = write_manifest(tmp_path, splits=(("test", 2),))
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: True, raising=False)
    assert run(["--manifest", str(m)], tmp_path / "out", ckpt) == 0
    assert "encoding faces test" in capsys.readouterr().err
    assert run(["--manifest", str(m), "--quiet"], tmp_path / "o2", ckpt) == 0
    assert "encoding" not in capsys.readouterr().err
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
    assert run(["--manifest", str(m)], tmp_path / "o3", ckpt) == 0
    err = capsys.readouterr().err
    assert "encoding faces" not in err and err.startswith("faces test: 6 samples encoded in")  # logs: one line


def test_unknown_labels_are_counted_not_fatal(tmp_path, ckpt, capsys):
    m = write_manifest(tmp_path, splits=(("test", 2),), extra=[
        {"path": "img/test_happy_0.png", "label": "bored", "split": "test"}])
    assert run(["--manifest", str(m), "--classes", ",".join(CLASSES)], tmp_path / "out", ckpt) == 0
    (rec,) = records(tmp_path / "out")
    assert rec["n_samples"] == 6 and rec["failures"]["count"] == 1
    assert rec["failures"]["examples"][0]["row"] == 7 and "'bored'" in rec["failures"]["examples"][0]["error"]
    assert "1 sample(s) could not be scored" in capsys.readouterr().out
    ints = tmp_path / "ints.jsonl"
    ints.write_text(json.dumps({"path": str(tmp_path / "img/test_sad_0.png"), "label": 1}) + "\n")
    assert run(["--manifest", str(ints)], tmp_path / "o2", ckpt) == 2
    assert "--classes" in capsys.readouterr().err


def test_linear_probe_trains_on_train_rows_only(tmp_path, ckpt, capsys):
    m = write_manifest(tmp_path, splits=(("train", 10), ("test", 2)))
    assert run(["--manifest", str(m), "--task", "linear_probe"], tmp_path / "out", ckpt) == 0
    (rec,) = records(tmp_path / "out")
    assert rec["split"] == "test" and rec["metrics"]["n_samples"] == 6
    assert rec["n_train"] == 30 and rec["probe"]["selected_on"].endswith("of train (UAR)")
    assert rec["protocol"] == {"mask_policy": "none", "video_pool": "mean_embed", "probe_protocol": "affectclip",
                               "probe_c": None}
    assert rec["data"]["train"] == f"{m.resolve()}:train"
    for bad in (["--split", "train"], ["--split", "all"]):  # would report the rows the probe trained on
        assert run(["--manifest", str(m), "--task", "linear_probe", *bad], tmp_path / "o2", ckpt) == 2
        assert "--train-manifest" in capsys.readouterr().err
    other = write_manifest(tmp_path / "other", splits=(("train", 6),))
    assert run(["--manifest", f"{m}:all", "--task", "linear_probe", "--probe-c", "1", "--train-manifest",
                str(other)], tmp_path / "o3", ckpt) == 0
    (rec,) = records(tmp_path / "o3")
    assert rec["split"] == "all" and rec["metrics"]["n_samples"] == 36 and rec["probe"]["C"] == 1.0


def regression_manifest(root, mixed_order):
    """Valence/arousal rows over the images of `write_manifest`; `mixed_order` lists the targets of train and test
    rows in opposite orders (a dataset takes the first row's order)."""
    rng = np.random.default_rng(1)
    extra = []
    for split, n, flip in (("train", 20, 0), ("test", 5, 1)):
        for i in range(n):
            v, a = rng.uniform(-1, 1, 2).round(3)
            targets = {"arousal": a, "valence": v} if mixed_order and (i + flip) % 2 == 0 else {"valence": v,
                                                                                                  "arousal": a}
            image = f"img/{split}_{CLASSES[i % 3]}_{i // 3 % 2}.png"
            extra.append({"path": image, "label": "happy", "split": split, "targets": targets})
    extra.append({"path": "img/test_sad_0.png", "label": "sad", "split": "test", "targets": {"valence": 0.5}})
    return write_manifest(root, splits=(("train", 2), ("test", 2)), extra=extra)


def test_regression_and_retrieval_rows_without_what_they_need_are_counted(tmp_path, ckpt):
    m = regression_manifest(tmp_path / "mixed", mixed_order=True)
    assert run(["--manifest", str(m), "--task", "regression", "--probe-c", "1"], tmp_path / "out", ckpt) == 0
    (rec,) = records(tmp_path / "out")
    assert rec["metrics"]["n_samples"] == 5 and rec["n_train"] == 20 and rec["failures"]["count"] == 13
    assert "no target 'arousal'" in " ".join(e["error"] for e in rec["failures"]["examples"])
    same = regression_manifest(tmp_path / "same", mixed_order=False)
    assert run(["--manifest", str(same), "--task", "regression", "--probe-c", "1"], tmp_path / "o1", ckpt) == 0
    (ref,) = records(tmp_path / "o1")
    for dim in ("valence", "arousal"):  # the targets were not swapped between train and test
        assert rec["metrics"]["per_dimension"][dim] == pytest.approx(ref["metrics"]["per_dimension"][dim])
    assert run(["--manifest", str(m), "--task", "retrieval"], tmp_path / "o2", ckpt) == 0
    (rec,) = records(tmp_path / "o2")
    assert rec["metrics"]["n_items"] == 6 and rec["failures"]["count"] == 6  # the rows without a caption


def test_two_prompt_sets_two_records_two_rows(tmp_path, ckpt, capsys):
    """Failed before: `--prompts expclip5` overwrote the `expression` record and `eval table` showed one row."""
    m = write_manifest(tmp_path, splits=(("test", 2),))
    out = tmp_path / "out"
    for prompts in ("expression", "expclip5", "expression"):  # re-running a protocol replaces its own record
        assert run(["--manifest", str(m), "--prompts", prompts], out, ckpt) == 0
    recs = records(out)
    assert sorted(r["prompt_set"] for r in recs) == ["expclip5", "expression"]
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert all(r["weights"]["sha256"] == sha and r["weights"]["path"] == str(ckpt.resolve()) for r in recs)
    assert run(["--manifest", str(m), "--agg", "logit"], out, ckpt) == 0
    df = build_table(out)
    assert len(df) == 3 and sorted(df["prompt_set"]) == ["expclip5", "expression", "expression"]
    assert sorted(df["prompt_agg"]) == ["embedding", "embedding", "logit"]
    assert {"mask_policy", "video_pool", "weights", "id"} <= set(df.columns) and set(df["weights"]) == {sha[:12]}
    capsys.readouterr()
    assert main(["eval", "table", str(out)]) == 0
    assert capsys.readouterr().out.count("| faces |") == 3


def test_record_id_covers_every_protocol_option():
    base = dict(model="m", benchmark="b", split="test", task="zeroshot", classes=["a"], result={"metrics": {}},
                weights={"path": None, "sha256": "0" * 64, "tensors_sha256": "1" * 64},
                protocol={"prompts": "expression", "agg": "embedding", "mask_policy": "none",
                          "video_pool": "mean_embed"})
    ids = {make_record(**base)["id"]}
    for change in ({"split": "valid"}, {"fold": 2}, {"task": "linear_probe"}, {"classes": ["b"]},
                   {"data": {"eval": "/other.jsonl"}}, {"weights": {**base["weights"], "sha256": "2" * 64}}):
        ids.add(make_record(**{**base, **change})["id"])
    for key, value in (("prompts", "expclip5"), ("agg", "logit"), ("mask_policy", "full"),
                       ("video_pool", "mean_logits"), ("probe_c", 1.0)):
        ids.add(make_record(**{**base, "protocol": {**base["protocol"], key: value}})["id"])
    assert len(ids) == 12
    assert make_record(**base)["id"] == make_record(**base)["id"]


def test_model_default_is_the_shipped_model(tmp_path, capsys):
    from affectclip.models.default import default_model_path

    m = write_manifest(tmp_path, splits=(("test", 1),))
    assert main(["eval", "run", "--manifest", str(m), "--output", str(tmp_path / "out"), "--quiet"]) == 0
    (rec,) = records(tmp_path / "out")
    assert rec["model"] == "default" and rec["weights"]["path"] == str(default_model_path())
    assert rec["weights"]["sha256"] == hashlib.sha256(default_model_path().read_bytes()).hexdigest()


def test_bad_samples_are_counted_and_the_job_finishes(tmp_path, ckpt, capsys):
    """A corrupt image and a decompression-bomb PNG (refused by PIL before decoding) are counted, not fatal."""
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    Image.new("1", (20000, 20000)).save(tmp_path / "img" / "bomb.png")  # 400 Mpx: > 2 x PIL's MAX_IMAGE_PIXELS
    m = write_manifest(tmp_path, splits=(("test", 2),), extra=[
        {"path": "img/corrupt.png", "label": "sad", "split": "test"},
        {"path": "img/bomb.png", "label": "happy", "split": "test"}])
    assert run(["--manifest", str(m)], tmp_path / "out", ckpt) == 0
    (rec,) = records(tmp_path / "out")
    assert rec["n_samples"] == 6 and rec["failures"]["count"] == 2
    errors = {pathlib.Path(e["path"]).name: e["error"] for e in rec["failures"]["examples"]}
    assert set(errors) == {"corrupt.png", "bomb.png"} and "too large to decode" in errors["bomb.png"]
    # nothing readable at all: one line, exit 1, no record
    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text(json.dumps({"path": "img/corrupt.png", "label": "sad"}) + "\n")
    capsys.readouterr()
    assert run(["--manifest", str(only_bad), "--classes", "sad"], tmp_path / "o2", ckpt) == 1
    err = capsys.readouterr().err
    assert "none of the 1 samples could be read" in err and "Traceback" not in err


def test_a_bad_label_in_a_benchmark_list_file_is_counted(tmp_path, ckpt):
    rng = np.random.default_rng(0)
    rows = ["path,label,split"]
    for c in ("neutral", "happiness", "surprise"):
        rel = f"images/valid/{c}.png"
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(tmp_path / rel)
        rows.append(f"{rel},{c},valid")
    rows.append("images/valid/neutral.png,boredom,valid")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    assert run(["--benchmark", "ferplus", "--root", str(tmp_path), "--split", "valid"], tmp_path / "out", ckpt) == 0
    (rec,) = records(tmp_path / "out")
    assert rec["n_samples"] == 3 and rec["failures"]["count"] == 1
    assert "line 5" in rec["failures"]["examples"][0]["error"] and "boredom" in rec["failures"]["examples"][0]["error"]


def test_bad_output_is_refused_before_the_model_loads(tmp_path, ckpt, capsys, monkeypatch):
    m = write_manifest(tmp_path, splits=(("test", 1),))
    monkeypatch.setattr(affectclip, "create_model", lambda *a, **k: pytest.fail("model loaded before --output check"))
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        assert run(["--manifest", str(m)], out, ckpt) == 2
        assert "--output" in capsys.readouterr().err

    def read_only(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.TemporaryFile", read_only)  # a read-only folder (root ignores chmod)
    assert run(["--manifest", str(m)], tmp_path / "ro", ckpt) == 2
    assert "--output" in capsys.readouterr().err


def test_corrupt_feature_cache_is_re_extracted_and_table_out_checked(tmp_path, ckpt, capsys):
    m = write_manifest(tmp_path, splits=(("test", 1),))
    assert run(["--manifest", str(m)], tmp_path / "out", ckpt) == 0
    (before,) = records(tmp_path / "out")
    (cache,) = (tmp_path / "out" / "features").glob("*.npz")
    cache.write_bytes(cache.read_bytes()[:100])  # truncated
    assert run(["--manifest", str(m)], tmp_path / "out", ckpt) == 0
    (after,) = records(tmp_path / "out")
    assert after["metrics"]["war"] == before["metrics"]["war"] and after["n_samples"] == 3
    assert "encoded in" in capsys.readouterr().err  # extracted again, not read from the broken file
    assert main(["eval", "table", str(tmp_path / "out"), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_a_failed_write_keeps_the_previous_record_whole(tmp_path, monkeypatch):
    rec = make_record(model="m", benchmark="b", split="test", task="zeroshot", classes=["a"],
                      result={"metrics": {"war": 50.0}})
    path = write_record(rec, tmp_path)
    before = path.read_bytes()

    def disk_full(self, data):
        with open(self, "wb") as fh:
            fh.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", disk_full)
    with pytest.raises(OSError):
        write_record({**rec, "metrics": {"war": 60.0}}, tmp_path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_every_eval_option_has_help():
    parser = build_parser()
    eval_parser = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "eval")[1]
    subs = [eval_parser] + list(next(a for a in eval_parser._actions
                                     if isinstance(a, argparse._SubParsersAction)).choices.values())
    missing = [f"{p.prog} {a.dest}" for p in subs for a in p._actions
               if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and not a.help]
    assert missing == []
