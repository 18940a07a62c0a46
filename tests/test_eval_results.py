"""Result records, tables, confusion PNG and the `affectclip eval` command (bad inputs and an end-to-end run)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import affectclip
from affectclip.cli import main
from affectclip.eval.results import (
    build_table,
    make_record,
    plot_confusion,
    to_markdown,
    write_record,
    write_table,
)
from affectclip.models.checkpoint import save_checkpoint


def fake_result(war):
    return {"metrics": {"war": war, "uar": war - 5, "n_samples": 10, "confusion_matrix": [[3, 1], [2, 4]],
                        "per_class_recall": {"a": 75.0, "b": 66.7}},
            "failures": {"count": 1, "examples": []}, "prompts": {"a": ["an expression of a."]}, "prompt_agg": "logit"}


def test_record_fields_and_table(tmp_path):
    split_file = tmp_path / "split.txt"
    split_file.write_text("x 1\n")
    for fold, war in ((1, 50.0), (2, 70.0)):
        rec = make_record(model="ViT-B-32", benchmark="dfew", split="test", fold=fold, task="zeroshot",
                          classes=["a", "b"], result=fake_result(war), split_files=[split_file], prompt_set="expression")
        path = write_record(rec, tmp_path / "res")
    saved = json.loads(path.read_text())
    assert path.name == f"dfew_test_fold2_ViT-B-32_zeroshot_{saved['id']}.json" and len(saved["id"]) == 12
    for key in ("model", "weights", "benchmark", "split", "fold", "task", "classes", "split_file_sha256", "prompts",
                "prompt_agg", "n_samples", "metrics", "failures", "package_version", "git_commit", "timestamp",
                "protocol", "id"):
        assert key in saved, key
    assert len(next(iter(saved["split_file_sha256"].values()))) == 64
    (tmp_path / "res" / "notes.json").write_text('{"other": 1}')  # unrelated JSON is ignored
    df = build_table(tmp_path / "res")
    assert list(df["fold"]) == [1, 2] and list(df["war"]) == [50.0, 70.0] and list(df["n_failures"]) == [1, 1]
    md = to_markdown(df)
    assert "| 50.00 |" in md and md.count("\n") == 4
    write_table(df, tmp_path / "t.csv", "csv")
    assert "war" in (tmp_path / "t.csv").read_text().splitlines()[0]
    png = plot_confusion([[3, 1], [0, 0]], ["a", "b"], tmp_path / "cm.png")
    assert Image.open(png).size[0] > 100
    with pytest.raises(FileNotFoundError):
        build_table(tmp_path / "nothing")


def test_cli_list_and_bad_inputs(tmp_path, capsys):
    assert main(["eval", "--list"]) == 0
    assert "EmoLabel_DataSplit" in capsys.readouterr().out
    base = ["eval", "run", "--model", "tiny-vit", "--output", str(tmp_path / "out")]
    assert main([*base, "--benchmark", "rafdb", "--root", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "raf").mkdir()
    assert main([*base, "--benchmark", "rafdb", "--root", str(tmp_path / "raf")]) == 2
    assert "list_patition_label.txt" in capsys.readouterr().err
    (tmp_path / "raf" / "EmoLabel").mkdir()
    (tmp_path / "raf" / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 1\n")
    assert main([*base, "--benchmark", "rafdb", "--root", str(tmp_path / "raf")]) == 2
    assert "empty" in capsys.readouterr().err
    (tmp_path / "rav" / "Actor_01").mkdir(parents=True)
    (tmp_path / "rav" / "Actor_01" / "03-01-02-01-01-01-01.mp4").write_bytes(b"x")
    assert main([*base, "--benchmark", "ravdess", "--root", str(tmp_path / "rav"), "--prompts", "descriptions"]) == 2
    assert "calm" in capsys.readouterr().err  # class names vs prompt set mismatch
    assert main([*base, "--benchmark", "nope", "--root", str(tmp_path)]) == 2
    assert main([*base, "--benchmark", "jaffe", "--root", str(tmp_path), "--task", "linear_probe"]) == 2


def one_record(out, pattern):
    """The one result record under `out` whose name matches `pattern` (names end with the record id)."""
    files = sorted(out.glob(pattern))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


@pytest.fixture
def tiny_ckpt(tmp_path):
    """A saved tiny model: fixed weights, so feature caches and record ids are reproducible across runs."""
    return save_checkpoint(affectclip.create_model("tiny-vit"), tmp_path / "tiny.safetensors")


def fake_ferplus(root, n_per_class=4):
    rng = np.random.default_rng(0)
    rows = ["path,label,split"]
    for split in ("train", "valid"):
        for c in ("neutral", "happiness", "surprise"):
            for i in range(n_per_class):
                rel = f"images/{split}/{c}{i}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(root / rel)
                rows.append(f"{rel},{c},{split}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")


def test_cli_end_to_end_zeroshot_probe_table(tmp_path, bpe_path, monkeypatch, capsys, tiny_ckpt):
    monkeypatch.setenv("AFFECTCLIP_BPE_PATH", str(bpe_path))
    fake_ferplus(tmp_path / "fp")
    out = tmp_path / "out"
    common = ["eval", "run", "--model", str(tiny_ckpt), "--benchmark", "ferplus", "--root", str(tmp_path / "fp"),
              "--split", "valid", "--output", str(out), "--batch-size", "5"]
    assert main([*common, "--prompts", "expclip5", "--agg", "logit"]) == 0
    rec = one_record(out, "ferplus_valid_tiny.safetensors_zeroshot_*.json")
    assert rec["n_samples"] == 12 and rec["prompt_agg"] == "logit" and rec["failures"]["count"] == 0
    assert rec["prompts"]["neutral"][0] == "an expression of neutral."
    assert rec["metrics"]["n_classes_present"] == 3 and rec["metrics"]["classes_absent"][0] == "sadness"
    assert (out / f"ferplus_valid_tiny.safetensors_zeroshot_{rec['id']}.png").exists()
    assert main([*common, "--task", "linear_probe", "--probe-c", "1.0"]) == 0
    rec = one_record(out, "ferplus_valid_tiny.safetensors_linear_probe_*.json")
    assert rec["probe"]["C"] == 1.0 and rec["metrics"]["n_samples"] == 12
    assert len(list((out / "features").glob("*.npz"))) == 2  # valid split features reused across tasks
    capsys.readouterr()
    assert main(["eval", "table", str(out)]) == 0
    table = capsys.readouterr().out
    assert "zeroshot" in table and "linear_probe" in table


def fake_dfew(root, per_fold=3):
    """DFEW layout: 5 test fold CSVs over frame folders Clip/clip_224x224/<5 digits>/ (2 tiny frames each)."""
    rng = np.random.default_rng(1)
    for fold in range(1, 6):
        rows = ["video_name,label"]
        for i in range(per_fold):
            vid = fold * 10 + i
            d = root / "Clip" / "clip_224x224" / f"{vid:05d}"
            d.mkdir(parents=True)
            for t in range(2):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{t:03d}.jpg")
            rows.append(f"{vid},{1 + (vid % 7)}")
        split = root / "EmoLabel_DataSplit" / "test(single-labeled)"
        split.mkdir(parents=True, exist_ok=True)
        (split / f"set_{fold}.csv").write_text("\n".join(rows) + "\n")


def test_cli_fold_all_writes_fold_records_and_mean(tmp_path, bpe_path, monkeypatch, capsys):
    monkeypatch.setenv("AFFECTCLIP_BPE_PATH", str(bpe_path))
    fake_dfew(tmp_path / "dfew")
    out = tmp_path / "out"
    base = ["eval", "run", "--model", "tiny-vit", "--benchmark", "dfew", "--root", str(tmp_path / "dfew"),
            "--output", str(out), "--batch-size", "4"]
    assert main(base) == 2 and "--fold" in capsys.readouterr().err
    assert main([*base, "--fold", "6"]) == 2 and "folds are 1..5" in capsys.readouterr().err
    assert main([*base, "--fold", "all", "--workers", "1"]) == 0
    folds = [one_record(out, f"dfew_test_fold{k}_tiny-vit_zeroshot_*.json") for k in range(1, 6)]
    mean = one_record(out, "dfew_test_foldmean_tiny-vit_zeroshot_*.json")
    wars = [r["metrics"]["war"] for r in folds]
    assert mean["fold"] == "mean" and mean["n_samples"] == 15 and mean["per_fold"]["fold"] == [1, 2, 3, 4, 5]
    assert mean["metrics"]["war"] == pytest.approx(np.mean(wars))
    assert mean["metrics"]["std"]["uar"] == pytest.approx(np.std([r["metrics"]["uar"] for r in folds]))
    assert mean["per_fold"]["war"] == pytest.approx(wars) and mean["mask_policy"] == "none"
    capsys.readouterr()
    df = build_table(out)
    assert list(df["fold"]) == [1, 2, 3, 4, 5, "mean"]
    assert df["std.war"].iloc[-1] == pytest.approx(np.std(wars)) and df["std.war"].iloc[:5].isna().all()


def test_cli_mask_policy_for_subject_token_models(tmp_path, bpe_path, monkeypatch):
    """A subject-token model's features depend on --mask-policy, which is recorded; face masks come from boxes."""
    monkeypatch.setenv("AFFECTCLIP_BPE_PATH", str(bpe_path))
    ckpt = save_checkpoint(affectclip.create_model("tiny-vit", vision_cfg={"subject_token": True}),
                           tmp_path / "subject-vit.safetensors")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"path": f"{i}.png", "caption": f"a face number {i}", "boxes": [[0, 0, 32, 32 + 8 * i]]})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    feats = {}
    for policy in (None, "none", "full", "face"):
        out = tmp_path / f"out_{policy}"
        args = ["eval", "run", "--model", str(ckpt), "--manifest", str(tmp_path / "m.jsonl"),
                "--task", "retrieval", "--output", str(out)]
        assert main(args + (["--mask-policy", policy] if policy else [])) == 0
        rec = json.loads(next(out.glob("*.json")).read_text())
        assert rec["mask_policy"] == (policy or "full")
        with np.load(next((out / "features").glob("*.npz"))) as z:
            feats[policy] = z["features"]
    np.testing.assert_allclose(feats[None], feats["full"])
    assert not np.allclose(feats["none"], feats["full"]) and not np.allclose(feats["face"], feats["full"])
    assert len(list((tmp_path / "out_face" / "masks").glob("mask_*.png"))) == 4
    plain = ["eval", "run", "--model", "tiny-vit", "--manifest", str(tmp_path / "m.jsonl"), "--task", "retrieval",
             "--output", str(tmp_path / "o"), "--mask-policy", "full"]
    assert main(plain) == 2  # no subject token: only "none" makes sense
