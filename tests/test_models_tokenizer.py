"""CLIP BPE tokenizer: exact open_clip ids, truncation policies, locating the merges file."""

from __future__ import annotations

import json

import pytest
import torch

from affectclip.models import tokenizer as tokmod
from affectclip.models.tokenizer import EOT_ID, SOT_ID, CLIPTokenizer


def test_reproduces_open_clip_ids(testvectors_dir, bpe_path):
    vectors = json.loads((testvectors_dir / "tokenizer_vectors.json").read_text())
    tok = CLIPTokenizer(bpe_path=bpe_path)
    ids = tok(vectors["strings"])
    assert ids.dtype == torch.int64 and ids.shape == (len(vectors["strings"]), 77)
    assert ids.tolist() == vectors["ids"]
    assert tok(vectors["strings"][0]).tolist() == [vectors["ids"][0]]
    assert tok.vocab_size == 49408 and tok.truncated == 0


def test_truncation_keeps_or_drops_eot(bpe_path):
    text = " ".join(f"word{i}" for i in range(60))  # far more than 77 BPE tokens
    full = CLIPTokenizer(context_length=77, bpe_path=bpe_path).encode(text)
    assert len(full) > 76
    keep = CLIPTokenizer(bpe_path=bpe_path)
    ids = keep([text, "short"])
    assert ids[0, 0] == SOT_ID and ids[0, -1] == EOT_ID and ids[0, 1:76].tolist() == full[:75]
    assert keep.truncated == 1
    drop = CLIPTokenizer(bpe_path=bpe_path, truncate_keep_eot=False)  # EmotionCLIP's fork
    ids = drop(text)
    assert ids[0, 1:].tolist() == full[:76] and EOT_ID not in ids[0].tolist()
    assert drop.truncated == 1


def test_short_context_length(bpe_path):
    ids = CLIPTokenizer(context_length=8, bpe_path=bpe_path)("a photo of a happy face")
    assert ids.tolist() == [[SOT_ID, 320, 1125, 539, 320, 900, 1710, EOT_ID]]


def test_bpe_path_from_environment(bpe_path, monkeypatch):
    monkeypatch.setenv("AFFECTCLIP_BPE_PATH", str(bpe_path))
    assert CLIPTokenizer().bpe_path == bpe_path


def test_merges_file_ships_with_affectclip(monkeypatch, bpe_path):
    """A plain install finds the merges file without open_clip: the packaged copy is the reference file."""
    monkeypatch.delenv("AFFECTCLIP_BPE_PATH", raising=False)
    tok = CLIPTokenizer()
    assert tok.bpe_path == tokmod.SHIPPED_BPE and tok.bpe_path.read_bytes() == bpe_path.read_bytes()
    assert (tok.bpe_path.parent / "LICENSE-clip-bpe.txt").read_text().count("MIT License") == 1


def test_missing_bpe_file_names_options_that_exist(monkeypatch, tmp_path):
    monkeypatch.delenv("AFFECTCLIP_BPE_PATH", raising=False)
    monkeypatch.setattr(tokmod, "SHIPPED_BPE", tmp_path / "gone.txt.gz")
    with pytest.raises(FileNotFoundError) as err:
        CLIPTokenizer()
    message = str(err.value)
    assert "bpe_path=" in message and "AFFECTCLIP_BPE_PATH" in message and "--force-reinstall" in message
    with pytest.raises(FileNotFoundError, match="bpe_path=.*--bpe-path"):
        CLIPTokenizer(bpe_path=tmp_path / "missing.txt.gz")


def test_wrong_merges_file_is_rejected(tmp_path):
    import gzip

    bad = tmp_path / "bpe.txt.gz"
    with gzip.open(bad, "wt") as handle:
        handle.write("header\na b\n")
    with pytest.raises(ValueError, match="not the CLIP merges file"):
        CLIPTokenizer(bpe_path=bad)


def test_cached_tokenizer_matches_and_tokenises_each_distinct_text_once(bpe_path):
    """The training loop's memo: identical rows, one tokenizer call per new distinct text, bounded, same errors."""
    from affectclip.train.tasks import CachedTokenizer

    plain = CLIPTokenizer(bpe_path=bpe_path)
    texts = ["a happy face", "a sad face", "a happy face", " ".join(f"word{i}" for i in range(60))]
    seen: list[list[str]] = []

    def spy(batch):
        seen.append(list(batch))
        return plain(batch)

    cached = CachedTokenizer(spy, max_entries=3)
    assert torch.equal(cached(texts), CLIPTokenizer(bpe_path=bpe_path)(texts))
    assert seen == [["a happy face", "a sad face", texts[3]]]
    out = cached(["a sad face", "a happy face"])
    assert torch.equal(out, plain(["a sad face", "a happy face"])) and len(seen) == 1  # served from the memo
    out[:] = 0  # a caller editing its batch must not reach the memo
    assert torch.equal(cached("a sad face"), plain("a sad face"))
    cached(["an angry face"])  # a 4th distinct text: the memo (max 3) starts over instead of growing
    assert seen[-1] == ["an angry face"] and len(cached._rows) == 1
    cached.tokenizer = plain
    assert cached.truncated == plain.truncated == 1 and cached.context_length == 77
    with pytest.raises(TypeError, match="text 1 is a int"):
        cached(["fine", 3])
