"""Synthetic canaries: identifier-shaped secrets planted in training text to measure memorisation.

Each job derives its canaries from ``recipe.canaries.seed`` alone, so the audit can regenerate
exactly the secrets the training run planted without anything crossing between the two sandbox
runs. The secrets are random numbers in a record-number format, never real identifiers; the
candidate space R (all numbers of that format) has a known size, which is what the exposure metric
(Carlini et al., "The Secret Sharer", 2019) needs.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .spec import CanarySpec

# A header line as clinical notes often carry one. The prefix is fixed so that every candidate
# differs from the canary only in the secret digits. No trailing space: byte-level tokenizers
# attach the space to the digits, and the audit scores prefix and secret apart.
CANARY_PREFIX = "Medical record number:"
SECRET_DIGITS = 7
CANDIDATE_SPACE = 10**SECRET_DIGITS
LOG2_SPACE = math.log2(CANDIDATE_SPACE)


@dataclass(frozen=True)
class Canary:
    secret: str
    repeats: int

    @property
    def text(self) -> str:
        return canary_text(self.secret)


def canary_text(secret: str) -> str:
    return CANARY_PREFIX + canary_continuation(secret)


def canary_continuation(secret: str) -> str:
    """The part of a canary after the shared prefix (what exposure actually ranks)."""
    return f" {secret}."


def make_canaries(spec: CanarySpec) -> list[Canary]:
    """``per_repeat`` distinct secrets for each repeat count, from the canary seed only."""
    rng = random.Random(f"canaries:{spec.seed}")
    secrets = _distinct_secrets(rng, spec.per_repeat * len(spec.repeats), exclude=set())
    return [
        Canary(secret=secrets[i * spec.per_repeat + j], repeats=repeats)
        for i, repeats in enumerate(spec.repeats)
        for j in range(spec.per_repeat)
    ]


def candidate_secrets(seed: int, count: int, *, exclude: set[str]) -> list[str]:
    """``count`` random secrets of the canary format, none of them a planted one."""
    rng = random.Random(f"candidates:{seed}")
    return _distinct_secrets(rng, count, exclude=exclude)


def plant(texts: list[str], canaries: list[Canary], *, seed: int) -> list[str]:
    """Return a copy of ``texts`` with each canary put at the head of ``repeats`` distinct texts.

    At the head, so that truncation to ``max_seq_length`` never cuts a canary off and the audit
    scores it in the context it was trained in. A canary that repeats more often than there are
    texts goes into some texts twice (one line each).
    """
    if not texts:
        raise ValueError("no training texts to plant canaries in")
    rng = random.Random(f"plant:{seed}")
    heads: list[list[str]] = [[] for _ in texts]
    for canary in canaries:
        for index in _spread(rng, len(texts), canary.repeats):
            heads[index].append(canary.text)
    return ["\n".join([*head, text]) if head else text for head, text in zip(heads, texts)]


def _spread(rng: random.Random, n: int, k: int) -> list[int]:
    full, rest = divmod(k, n)
    return [i for _ in range(full) for i in range(n)] + rng.sample(range(n), rest)


def _distinct_secrets(rng: random.Random, count: int, *, exclude: set[str]) -> list[str]:
    if count > CANDIDATE_SPACE // 2:
        raise ValueError("too many secrets asked for the candidate space")
    seen = set(exclude)
    out: list[str] = []
    while len(out) < count:
        secret = f"{rng.randrange(CANDIDATE_SPACE):0{SECRET_DIGITS}d}"
        if secret not in seen:
            seen.add(secret)
            out.append(secret)
    return out
