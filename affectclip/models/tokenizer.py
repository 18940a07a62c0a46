"""CLIP byte-level BPE tokenizer giving the same ids as open_clip's `SimpleTokenizer` (and OpenAI `clip.tokenize`).

The merges file `bpe_simple_vocab_16e6.txt.gz` (MIT, (c) OpenAI; licence in `affectclip/assets/LICENSE-clip-bpe.txt`)
ships inside affectclip, so every install has it; an explicit path or the AFFECTCLIP_BPE_PATH environment variable
takes precedence (e.g. to use open_clip's copy).
"""

from __future__ import annotations

import gzip
import html
import os
from functools import lru_cache
from pathlib import Path

import ftfy
import regex as re
import torch

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
BPE_ENV = "AFFECTCLIP_BPE_PATH"
SHIPPED_BPE = Path(__file__).resolve().parents[1] / "assets" / BPE_FILENAME
SOT_ID = 49406
EOT_ID = 49407


def find_bpe_path(bpe_path: str | os.PathLike | None = None) -> Path:
    """Resolve the merges file: explicit path > $AFFECTCLIP_BPE_PATH > the copy shipped inside affectclip."""
    if bpe_path is not None:
        path = Path(bpe_path)
        if not path.is_file():
            raise FileNotFoundError(f"CLIP BPE merges file not found at bpe_path={path} (command line: --bpe-path)")
        return path
    if os.environ.get(BPE_ENV):
        path = Path(os.environ[BPE_ENV])
        if not path.is_file():
            raise FileNotFoundError(f"CLIP BPE merges file not found at {BPE_ENV}={path}; fix or unset the variable")
        return path
    if SHIPPED_BPE.is_file():
        return SHIPPED_BPE
    raise FileNotFoundError(
        f"the CLIP BPE merges file '{BPE_FILENAME}' that ships with affectclip is missing ({SHIPPED_BPE}); "
        "reinstall affectclip (pip install --force-reinstall affectclip), or point to a copy: "
        f"the environment variable {BPE_ENV}=/path/to/{BPE_FILENAME} (any command), --bpe-path "
        f"(affectclip predict|embed|search|export) or bpe_path= in Python. Models with a 'wordpiece' text tower "
        "need no BPE file."
    )


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """Reversible byte -> printable unicode character table (GPT-2/CLIP), so BPE never sees raw whitespace or
    control bytes."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(zip(word[:-1], word[1:], strict=True))


def clean_text(text: str) -> str:
    """ftfy repair, double HTML unescape, whitespace collapse, lower-case: CLIP's normalisation before BPE."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class CLIPTokenizer:
    """Callable `tok(texts) -> LongTensor [N, context_length]` with SOT 49406, EOT 49407, zero padding.

    `truncate_keep_eot=True` (open_clip/OpenAI behaviour) overwrites the last kept token with EOT when a text is
    too long; False reproduces EmotionCLIP's fork, which cuts without restoring EOT (argmax pooling then lands on
    the highest id present). `truncated` counts texts that did not fit, so pipelines can report it.
    """

    def __init__(
        self,
        context_length: int = 77,
        bpe_path: str | os.PathLike | None = None,
        truncate_keep_eot: bool = True,
    ) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (start and end tokens), got {context_length}")
        self.context_length = context_length
        self.truncate_keep_eot = truncate_keep_eot
        self.truncated = 0
        self.bpe_path = find_bpe_path(bpe_path)
        try:
            lines = gzip.open(self.bpe_path).read().decode("utf-8").split("\n")
        except (OSError, UnicodeDecodeError, EOFError) as exc:
            raise ValueError(f"cannot read the CLIP BPE merges file {self.bpe_path}: {exc}") from exc
        merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
        if len(merges) != 48894 or any(len(m) != 2 for m in merges):
            raise ValueError(
                f"{self.bpe_path} is not the CLIP merges file {BPE_FILENAME} (unexpected content)"
            )
        self.byte_encoder = bytes_to_unicode()
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        special = ["<start_of_text>", "<end_of_text>"]
        vocab.extend(special)
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.vocab_size = len(self.encoder)
        self.bpe_ranks = {merge: i for i, merge in enumerate(merges)}
        self.cache = {t: t for t in special}
        self.pat = re.compile(
            "|".join(special) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            re.IGNORECASE,
        )

    def bpe(self, token: str) -> str:
        """Apply the merges to one pre-token; returns space-separated sub-words (cached)."""
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = _pairs(word)
        result = " ".join(word)
        self.cache[token] = result
        return result

    def encode(self, text: str) -> list[int]:
        """Text -> BPE ids without start/end tokens."""
        ids: list[int] = []
        for token in re.findall(self.pat, clean_text(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(token).split(" "))
        return ids

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        result = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {row} is a {type(text).__name__}, expected str")
            ids = [SOT_ID, *self.encode(text), EOT_ID]
            if len(ids) > self.context_length:
                self.truncated += 1
                ids = ids[: self.context_length]
                if self.truncate_keep_eot:
                    ids[-1] = EOT_ID
            result[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return result
