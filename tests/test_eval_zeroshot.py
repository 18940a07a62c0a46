"""Zero-shot classifier, prompt aggregation, video pooling and sample accounting on a tiny fake DualEncoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from affectclip.eval import prompts as P
from affectclip.eval.features import cached_features
from affectclip.eval.zeroshot import build_classifier, evaluate_zero_shot, zero_shot_predict
from affectclip.models.dual_encoder import DualEncoder

D = 8


class PixelTower(nn.Module):
    output_dim = D

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3 * 4 * 4, D)

    def forward(self, images, mask=None):
        return self.proj(images.flatten(1))


class BagTower(nn.Module):
    output_dim = D
    context_length = 6

    def __init__(self, vocab=64):
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, D, padding_idx=0)

    def forward(self, tokens):
        return self.bag(tokens)


class HashTokenizer:
    context_length = 6
    vocab_size = 64

    def __init__(self):
        self.truncated = 0

    def __call__(self, texts):
        texts = [texts] if isinstance(texts, str) else texts
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [1 + sum(map(ord, w)) % 63 for w in t.split()]
            self.truncated += len(ids) > self.context_length
            ids = ids[: self.context_length]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


def make_model(temporal=None):
    torch.manual_seed(0)
    return DualEncoder(PixelTower(), BagTower(), temporal=temporal)


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def image_dataset(n=12, classes=3, fail=()):
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        if i in fail:
            out.append({"error": "cannot decode", "index": i, "path": f"img{i}.png"})
        else:
            out.append(
                {"image": torch.rand(3, 4, 4, generator=g), "label": i % classes, "index": i, "id": str(i)}
            )
    return ListDataset(out)


def test_embedding_vs_logit_aggregation_follow_definitions():
    model, tok = make_model(), HashTokenizer()
    prompts = {"a": ["x y", "z w q"], "b": ["k"], "c": ["m n", "o", "p r s"]}
    emb = build_classifier(model, tok, prompts, "embedding")
    log = build_classifier(model, tok, prompts, "logit")
    f = F.normalize(torch.randn(5, D), dim=-1)
    with torch.no_grad():
        t = {c: model.encode_text(tok(ps)) for c, ps in prompts.items()}
    w = torch.stack([F.normalize(t[c].mean(0), dim=-1) for c in prompts])
    torch.testing.assert_close(zero_shot_predict(f, emb, torch.tensor(0.0)), f @ w.T)
    ref = torch.stack([(f @ t[c].T).mean(1) for c in prompts], 1)
    torch.testing.assert_close(
        zero_shot_predict(f, log, torch.log(torch.tensor(100.0))), 100 * ref, rtol=1e-4, atol=1e-4
    )


def test_evaluate_counts_failures_and_is_deterministic():
    model, tok = make_model(), HashTokenizer()
    classes = ["happiness", "sadness", "anger"]
    prompts = P.build_prompts(classes, "expclip5")
    ds = image_dataset(fail=(3, 7))
    r1 = evaluate_zero_shot(model, tok, ds, classes, prompts, agg="logit", batch_size=4)
    r2 = evaluate_zero_shot(model, tok, ds, classes, prompts, agg="logit", batch_size=5)
    m = r1["metrics"]
    assert m["n_samples"] == 10 and m["n_failures"] == 2 and r1["failures"]["count"] == 2
    assert m["war_all"] == pytest.approx(m["war"] * 10 / 12)
    assert sum(map(sum, m["confusion_matrix"])) == 10
    assert r1["predictions"] == r2["predictions"]  # batch size does not change anything
    assert r1["prompts"]["happiness"][0] == "an expression of happiness."


def test_class_name_mismatch_and_bad_labels_are_rejected():
    model, tok = make_model(), HashTokenizer()
    with pytest.raises(ValueError, match="mismatch"):
        evaluate_zero_shot(model, tok, image_dataset(), ["a", "b", "c"], {"a": ["a"], "b": ["b"], "x": ["x"]})
    with pytest.raises(ValueError, match="outside"):
        evaluate_zero_shot(model, tok, image_dataset(classes=3), ["a", "b"], {"a": ["a"], "b": ["b"]})
    with pytest.raises(ValueError, match="empty"):
        evaluate_zero_shot(model, tok, ListDataset([]), ["a"], {"a": ["a"]})


def test_compound_classes_use_component_embeddings():
    model, tok = make_model(), HashTokenizer()
    classes = ["happily surprised", "sadly angry"]
    comps = {c: P.compound_components(c) for c in classes}
    assert comps["happily surprised"] == ["happiness", "surprise"]
    base = P.build_prompts(sorted({x for v in comps.values() for x in v}), "expression")
    r = evaluate_zero_shot(model, tok, image_dataset(6, classes=2), classes, base, compounds=comps)
    assert r["metrics"]["n_classes"] == 2 and r["prompt_agg"] == "embedding"


def test_video_pools_for_image_model():
    model, tok = make_model(), HashTokenizer()
    g = torch.Generator().manual_seed(2)
    pad = torch.tensor([False, False, True])
    samples = [
        {"video": torch.rand(3, 3, 4, 4, generator=g), "padding_mask": pad, "label": i % 2, "index": i}
        for i in range(4)
    ]
    prompts = {"a": ["happy face"], "b": ["sad face"]}
    for pool in ("mean_embed", "mean_logits"):
        r = evaluate_zero_shot(model, tok, ListDataset(samples), ["a", "b"], prompts, video_pool=pool)
        assert r["metrics"]["n_samples"] == 4 and r["video_pool"] == pool
    # padded frames must not influence the result
    changed = [dict(s, video=torch.cat([s["video"][:2], torch.zeros(1, 3, 4, 4)])) for s in samples]
    a = evaluate_zero_shot(model, tok, ListDataset(samples), ["a", "b"], prompts, video_pool="mean_logits")
    b = evaluate_zero_shot(model, tok, ListDataset(changed), ["a", "b"], prompts, video_pool="mean_logits")
    assert a["predictions"] == b["predictions"]


def test_feature_cache_reused(tmp_path, monkeypatch):
    model = make_model()
    key = {"weights": "fake", "split": "test"}
    fs1, hit1 = cached_features(tmp_path, key, model=model, dataset=image_dataset(fail=(2,)))
    import affectclip.eval.features as feats

    monkeypatch.setattr(feats, "extract_features", lambda **k: pytest.fail("cache not used"))
    fs2, hit2 = cached_features(tmp_path, key, model=model, dataset=image_dataset(fail=(2,)))
    assert (hit1, hit2) == (False, True)
    np.testing.assert_array_equal(fs1.features, fs2.features)
    assert fs2.errors == fs1.errors and len(fs2.errors) == 1
    monkeypatch.undo()
    _, hit3 = cached_features(tmp_path / "x", {**key, "split": "train"}, model=model, dataset=image_dataset())
    assert hit3 is False


def test_prompt_builders():
    p = P.build_prompts(["happy", "Angry"], "clip_benchmark_fer")
    assert p["happy"][0] == "a photo of a happy looking face." and p["Angry"][3] == "a face that looks angry."
    ten = P.build_prompts(["sad"], "expclip10")["sad"]
    assert len(ten) == 10 and ten[-1] == "a clean photo showcasing a person's sad expression."
    d = P.build_prompts(["anger", "helplessness"], "descriptions")
    assert d["anger"][0].startswith("A facial expression showing irritation")
    with pytest.raises(ValueError, match="unknown prompt set"):
        P.build_prompts(["anger"], "nope")
    with pytest.raises(ValueError, match="no EmoCLIP description"):
        P.build_prompts(["calm"], "descriptions")


def test_retrieval_metrics_and_evaluate():
    from affectclip.eval.retrieval import evaluate_retrieval, retrieval_metrics

    items = np.eye(3, dtype=np.float32)
    texts = np.array([[1, 0, 0], [0, 0.9, 0.1], [0, 0.1, 0.9], [0.9, 0.1, 0]], dtype=np.float32)
    r = retrieval_metrics(items, texts, [0, 1, 2, 1])  # caption 3 (points at item 0) belongs to item 1
    assert r["text_to_item"]["R@1"] == 75.0 and r["item_to_text"]["R@1"] == 100.0 and r["n_texts"] == 4
    with pytest.raises(ValueError, match="no caption"):
        retrieval_metrics(items, texts[:2], [0, 1])
    model, tok = make_model(), HashTokenizer()
    ds = image_dataset(4, fail=(1,))
    for i, s in enumerate(ds.samples):
        if "error" not in s:
            s["caption"] = ["a happy face", "smiling"] if i % 2 else "a sad face"
    out = evaluate_retrieval(model, tok, ds)
    assert out["metrics"]["n_items"] == 3 and out["metrics"]["n_texts"] == 4 and out["failures"]["count"] == 1


WORLD = 2


def _rank_worker(rank: int, init_file: str, out_dir: str) -> None:
    """One torchrun-like rank: extract its shard, gather, score; rank 0 saves what it got."""
    import torch.distributed as dist

    from affectclip.eval.features import extract_features

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        classes = ["happiness", "sadness", "anger"]
        fs = extract_features(make_model(), image_dataset(n=9, fail=(4,)), batch_size=2)
        r = evaluate_zero_shot(make_model(), HashTokenizer(), None, classes, P.build_prompts(classes, "expclip5"),
                               features=fs)
        if rank == 0:
            np.savez(f"{out_dir}/rank0.npz", features=fs.features, indices=fs.indices, labels=fs.labels,
                     war=r["metrics"]["war"], uar=r["metrics"]["uar"], n=r["metrics"]["n_samples"],
                     errors=np.asarray([e["index"] for e in fs.errors]))
    finally:
        dist.destroy_process_group()


def test_two_ranks_count_every_sample_once_and_match_one_process(tmp_path):
    """9 samples (odd, one unreadable) over 2 gloo ranks: no DistributedSampler padding duplicates, same metrics."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    from affectclip.eval.features import extract_features

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    mp.spawn(_rank_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    got = np.load(tmp_path / "rank0.npz")
    classes = ["happiness", "sadness", "anger"]
    ref = extract_features(make_model(), image_dataset(n=9, fail=(4,)), batch_size=2)
    r = evaluate_zero_shot(make_model(), HashTokenizer(), None, classes, P.build_prompts(classes, "expclip5"),
                           features=ref)
    assert got["indices"].tolist() == [0, 1, 2, 3, 5, 6, 7, 8] and got["errors"].tolist() == [4]
    np.testing.assert_allclose(got["features"], ref.features, atol=1e-6)
    assert got["labels"].tolist() == ref.labels.tolist()
    assert int(got["n"]) == 8 and float(got["war"]) == r["metrics"]["war"] and float(got["uar"]) == r["metrics"]["uar"]
