"""CLIP's image normalisation, the one copy: data/ normalises with it and models/ write it into the configs of CLIP
architectures (data/ and models/ never import each other, so it lives on the floor)."""

from __future__ import annotations

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
