"""The training engine: exact resume after SIGKILL, NaN stops, run-folder protection, devices, 2-process gloo DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from affectclip.train import tasks
from affectclip.train.config import ConfigError, load_config
from affectclip.train.loop import TrainingError, train

# Tiny, deterministic runs: no augmentation randomness, LayerNorm-only model (no BatchNorm batch statistics).
TINY = [
    "model.name=tiny-vit-wordpiece", "data.val=null", "data.batch_size=16", "data.num_workers=0",
    "data.synthetic={n_train: 96, n_val: 0, image_size: 64, seed: 0}", "data.augment={scale: [1.0, 1.0], ratio: [1.0, 1.0]}",
    "run.progress=false", "run.log_every=1", "run.epochs=3", "optim.warmup_steps=2", "optim.lr=0.002",
]


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "affectclip.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _losses(run: Path) -> dict[int, float]:
    out: dict[int, float] = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]  # a step re-run after resume overwrites the killed attempt
    return out


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, monkeypatch):
    overrides = [*TINY, "run.save_every_steps=2"]
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    full = tmp_path / "full"
    train(load_config("demo", overrides), full)

    killed = tmp_path / "killed"
    proc = _cli(["train", "demo", *overrides, "--output", str(killed)])
    deadline = time.time() + 120
    while time.time() < deadline:  # kill mid-epoch, after the step-8 checkpoint (epoch 2 of 3, 6 steps per epoch)
        latest = killed / "latest.json"
        if latest.exists() and json.loads(latest.read_text())["step"] >= 8:
            break
        if proc.poll() is not None:
            pytest.fail(f"training process ended early:\n{proc.stdout.read()}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = json.loads((killed / "latest.json").read_text())["step"]
    assert 8 <= interrupted_at < 18, "the kill should land mid-run"

    train(load_config("demo", overrides), killed, resume=True)
    a, b = _losses(full), _losses(killed)
    assert sorted(a) == sorted(b) == list(range(1, 19))
    for step in a:
        assert a[step] == pytest.approx(b[step], abs=1e-6), f"loss differs at step {step}"
    wa, wb = load_file(full / "model.safetensors"), load_file(killed / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0, msg=f"final weight {k} differs")


def test_nan_loss_stops_with_step_and_samples_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    class NaNAtStep3(tasks.ContrastiveTask):
        def loss(self, f, step, total_steps):
            out = super().loss(f, step, total_steps)
            return {"loss": out["loss"] * float("nan")} if step == 2 else out

    monkeypatch.setitem(tasks.TASKS, "clip", NaNAtStep3)
    run = tmp_path / "nan"
    with pytest.raises(TrainingError, match=r"loss is nan at step 3 .*batch samples \['synthetic-train"):
        train(load_config("demo", [*TINY, "run.save_every_steps=1"]), run)
    latest = json.loads((run / "latest.json").read_text())
    assert latest["step"] == 2
    weights = load_file(run / latest["dir"] / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (run / "model.safetensors").exists()


def test_run_folder_protection(tmp_path):
    run = tmp_path / "run"
    train(load_config("demo", [*TINY, "run.epochs=1"]), run)
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        train(load_config("demo", [*TINY, "run.epochs=1"]), run)
    with pytest.raises(ConfigError, match=r"different config \(differs at: optim.lr"):
        train(load_config("demo", [*TINY, "run.epochs=1", "optim.lr=0.1"]), run, resume=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and holds no affectclip run"):
        train(load_config("demo", TINY), other)
    assert (other / "notes.txt").read_text() == "mine"


def test_resume_extends_a_finished_run_and_keeps_its_best_model(tmp_path, capsys):
    """--resume with a larger run.epochs continues the run; best.safetensors is only replaced by a better model."""
    with_val = [*TINY, "data.val=synthetic", "data.synthetic={n_train: 96, n_val: 32, image_size: 64, seed: 0}"]
    run = tmp_path / "run"
    train(load_config("demo", [*with_val, "run.epochs=1"]), run)
    best_before = (run / "best.safetensors").read_bytes()
    latest = json.loads((run / "latest.json").read_text())
    assert latest["epoch"] == 1 and latest["best"] is not None
    # pretend epoch 1 scored higher than any UAR can: a resumed run must not overwrite that best model
    (run / "latest.json").write_text(json.dumps({**latest, "best": 101.0}))
    from affectclip.cli import main

    assert main(["train", "demo", *with_val, "run.epochs=2", "--output", str(run), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "extending the run" in out
    assert "trained 6 steps (resumed at step 6, trained to 12)" in out  # this invocation's steps, not the total
    assert sorted(_losses(run)) == list(range(1, 13))
    assert "epochs: 2" in (run / "config.yaml").read_text()
    assert (run / "best.safetensors").read_bytes() == best_before
    with pytest.raises(ConfigError, match="not shorten"):
        train(load_config("demo", [*with_val, "run.epochs=1"]), run, resume=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when no GPU exists")
def test_asking_for_a_missing_gpu_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no CUDA device is visible here; use run.device=cpu"):
        train(load_config("demo", [*TINY, "run.device=cuda"]), tmp_path / "gpu")


def test_cli_takes_overrides_before_or_after_the_options(tmp_path, capsys):
    from affectclip.cli import main

    assert main(["train", "demo", *TINY[:3], "--output", str(tmp_path / "run"), *TINY[3:], "run.max_steps=1"]) == 0
    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    assert summary["steps"] == 1
    with pytest.raises(SystemExit):  # an unknown option is still an error, not an override
        main(["train", "demo", "--output", str(tmp_path / "other"), "run.seed=1", "--epochs", "3"])
    assert "unrecognized arguments: --epochs 3" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_cli_reports_bad_config_in_one_line(tmp_path):
    proc = _cli(["train", "demo", "run.epoch=2", "--output", str(tmp_path / "x")])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "unknown key(s) epoch in 'run'; allowed:" in out and "Traceback" not in out


def _assert_same_weights(run_a: Path, run_b: Path) -> None:
    wa, wb = load_file(run_a / "model.safetensors"), load_file(run_b / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=2e-4, rtol=1e-3, msg=f"weight {k} differs between 1 and 2 processes")


def _synthetic_with_corrupt_files(tmp_path: Path, n: int, n_corrupt: int) -> Path:
    """A manifest of n synthetic faces whose first n_corrupt image files hold garbage."""
    from affectclip.data.synthetic import write_synthetic_dataset

    manifest = write_synthetic_dataset(tmp_path / "data", n, 0, seed=0)
    for line in manifest.read_text().splitlines()[:n_corrupt]:
        (manifest.parent / json.loads(line)["path"]).write_bytes(b"not a png")
    return manifest


@pytest.mark.slow
def test_two_process_gloo_training_equals_one_process(tmp_path, torchrun):
    """torchrun with 2 CPU ranks (gloo, gathered local loss, DDP) ends at the weights of 1 process on the same batches,
    and validates as 1 process does: every rank encodes its share of the split (37 faces: uneven), the metrics count
    each face once, and only rank 0 writes the log and best.safetensors. (Validation on rank 0 alone deadlocked:
    the extraction's gather waited for rank 1.)"""
    with_val = ["data.val=synthetic", "data.synthetic={n_train: 96, n_val: 37, image_size: 64, seed: 0}"]
    overrides = [*TINY, *with_val, "run.epochs=1", "data.batch_size=16"]
    single = tmp_path / "single"
    one = train(load_config("demo", [*overrides[:-1], "data.batch_size=32"]), single)
    torchrun(["train", "demo", *overrides, "--output", str(tmp_path / "ddp")])
    summary = json.loads((tmp_path / "ddp" / "run_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    _assert_same_weights(single, tmp_path / "ddp")
    (val,) = summary["validation"]
    assert val["n_samples"] == one["validation"][0]["n_samples"] == 37
    assert val["confusion_matrix"] == one["validation"][0]["confusion_matrix"]
    val_lines = [ln for ln in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines() if '"val_war"' in ln]
    assert len(val_lines) == 1, "only rank 0 logs validation"
    assert (tmp_path / "ddp" / "best.safetensors").is_file()


@pytest.mark.slow
def test_two_process_emocapclip_with_mining_equals_one_process(tmp_path, torchrun):
    """The global-local task under torchrun: local sentences, attention-pooled patches and the mining similarities are
    gathered across ranks, so 2 x 16 faces take the same steps as 32 in one process. Every local sentence is used
    (sample_k 5 >= the synthetic captions' 5 regions: their random order does not change the mean), and mining is on
    from the first step."""
    overrides = [*TINY, "data.train=synthetic", "data.val=null", "run.epochs=1", "run.precision=fp32",
                 "loss.global_local={sample_k: 5}", "model.pretrained=null", "optim.warmup_steps=2",
                 "loss.mining={guide: cross, encoder: ema, ema_momentum: 0.9, threshold_text: 0.5, "
                 "threshold_image: 0.5, top_k: 2, weight: 0.5, warmup_frac: 0.0}"]
    single = train(load_config("emocapclip", [*overrides, "data.batch_size=32"]), tmp_path / "single")
    torchrun(["train", "emocapclip", *overrides, "data.batch_size=16", "--output", str(tmp_path / "ddp")])
    ddp = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert single["final"]["mining_mined_per_row_i2t"] > 0, "mining found no positives: the test would not cover it"
    assert ddp[-1]["mining_mined_per_row_i2t"] == pytest.approx(single["final"]["mining_mined_per_row_i2t"])
    _assert_same_weights(tmp_path / "single", tmp_path / "ddp")


@pytest.mark.slow
def test_two_process_run_reports_every_ranks_unreadable_samples_once(tmp_path, torchrun):
    """Each rank reads its own share of the data; run_summary.json (written by rank 0) must still list the corrupt
    files rank 1 met, and the CLI prints the run's report once, not once per rank."""
    manifest = _synthetic_with_corrupt_files(tmp_path, n=64, n_corrupt=6)
    res = torchrun(["train", "demo", *TINY, "run.epochs=1", f"data.train={manifest}", "--output", str(tmp_path / "ddp")])
    summary = json.loads((tmp_path / "ddp" / "run_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["bad_samples"] == 6 == summary["bad_reads"]
    assert sorted(b["index"] for b in summary["bad_sample_list"]) == list(range(6))
    assert res.stdout.count("6 samples could not be read") == 1 and res.stdout.count("trained 2 steps") == 1


@pytest.mark.slow
def test_two_process_run_skips_together_a_batch_one_rank_could_not_read_at_all(tmp_path, torchrun):
    """With 2 faces per rank and 3 of 4 files corrupt, some steps find one rank's batch entirely unreadable: every
    rank must skip that step together (a rank stepping alone waited forever in its collectives)."""
    manifest = _synthetic_with_corrupt_files(tmp_path, n=32, n_corrupt=24)
    torchrun(["train", "demo", *TINY, "run.epochs=1", "data.batch_size=2", f"data.train={manifest}",
                   "--output", str(tmp_path / "ddp")])
    summary = json.loads((tmp_path / "ddp" / "run_summary.json").read_text())
    assert summary["bad_samples"] == 24
    assert 1 <= summary["steps"] < 8, summary["steps"]  # 8 batches per rank; those with a fully unreadable rank skipped


def test_feature_caching_accumulation_equals_one_big_batch(tmp_path):
    """accum_freq=2 x batch 8 takes the same SGD step as batch 16: every micro-batch is contrasted against all 16."""
    base = [*TINY, "run.max_steps=1", "run.epochs=1", "optim.name=sgd", "optim.momentum=0.0", "optim.lr=0.5",
            "optim.weight_decay=0.0", "optim.warmup_steps=0", "optim.schedule=constant"]
    train(load_config("demo", [*base, "data.batch_size=16"]), tmp_path / "big")
    train(load_config("demo", [*base, "data.batch_size=8", "run.accum_freq=2"]), tmp_path / "accum")
    torch.manual_seed(0)  # train() seeds with run.seed before building the model: rebuild the starting point
    from affectclip.models.factory import create_model

    init = create_model("tiny-vit-wordpiece").state_dict()
    wa, wb = load_file(tmp_path / "big" / "model.safetensors"), load_file(tmp_path / "accum" / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=1e-5, msg=f"{k} differs")
    assert not torch.equal(wa["visual.proj"], init["visual.proj"]), "the step should have moved the weights"


def test_cpu_training_uses_fused_adamw_and_trains_the_same_model(tmp_path):
    """On CPU the default AdamW is torch's fused kernel (several times faster per step than its per-tensor loop,
    benchmarks/train_step.py). It must train the same model: optim.fused=false gives the same losses and weights up
    to float round-off."""
    from affectclip.train.loop import build_optimizer

    params = [{"params": [torch.nn.Parameter(torch.zeros(3))]}]
    assert build_optimizer(params, load_config("demo", TINY), torch.device("cpu")).defaults["fused"] is True
    assert not build_optimizer(params, load_config("demo", [*TINY, "optim.fused=false"]),
                               torch.device("cpu")).defaults["fused"]
    overrides = [*TINY, "run.epochs=1"]
    train(load_config("demo", overrides), tmp_path / "fused")
    train(load_config("demo", [*overrides, "optim.fused=false"]), tmp_path / "per_tensor")
    a, b = _losses(tmp_path / "fused"), _losses(tmp_path / "per_tensor")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-4), f"loss differs at step {step}"
    # compare what the models compute: Adam turns the round-off-sized gradients of attention's key bias (which the
    # softmax ignores) into full-size steps of either sign, so those weights differ without changing any output
    from affectclip.models.factory import create_model, get_tokenizer

    fused, per_tensor = (create_model(tmp_path / run / "model.safetensors").eval() for run in ("fused", "per_tensor"))
    images, tokens = torch.rand(4, 3, 64, 64), get_tokenizer(fused)(["a happy face", "a sad face"])
    with torch.no_grad():
        torch.testing.assert_close(fused.encode_image(images), per_tensor.encode_image(images), atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(fused.encode_text(tokens), per_tensor.encode_text(tokens), atol=1e-4, rtol=1e-3)


def test_plot_draws_the_curves_of_a_run(tmp_path):
    from affectclip.train.plot import plot_run

    run = tmp_path / "run"
    train(load_config("demo", [*TINY, "run.epochs=1"]), run)
    png = plot_run(run)
    assert png.exists() and png.stat().st_size > 5000
    with pytest.raises(FileNotFoundError, match="affectclip run folder"):
        plot_run(tmp_path / "nowhere")
