"""The semantic layer: within one partition (the same tenant, model, system, tools, parameters
and earlier turns), find a stored answer whose last user turn means the same.

The vectors of a partition are held in memory as one numpy matrix, reloaded from the store
when older than ``REFRESH`` seconds (so entries other instances stored become visible) and
extended in place by this process's own stores.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import numpy as np

from midway_cache.guard import Features, agree_features, features
from midway_cache.stores.base import Candidate, Store
from midway_cache.verify import Verifier

REFRESH = 5.0
_MAX_PARTITIONS = 4096
# candidates above the threshold checked by the guard before giving up (bounds the work when
# a partition holds many near-identical prompts that differ in numbers, say)
_MAX_CHECKED = 8


@attrs.define
class Match:
    key: str
    similarity: float
    prompt: str


@attrs.define
class _Partition:
    loaded_at: float
    keys: list[str]
    prompts: list[str]
    tool_use: list[bool]
    matrix: np.ndarray[Any, np.dtype[np.float32]]  # rows beyond len(keys) are spare capacity
    features: dict[int, Features] = attrs.field(factory=dict)  # the guard's, once per prompt


class SemanticIndex:
    def __init__(self, store: Store, guard: bool = True,
                 verifier: Verifier | None = None) -> None:
        self.store = store
        self.guard = guard
        self.verifier = verifier
        self._partitions: dict[str, _Partition] = {}

    async def _partition(self, partition: str, now: float) -> _Partition:
        cached = self._partitions.get(partition)
        if cached is not None and time.monotonic() - cached.loaded_at < REFRESH:
            return cached
        found = await self.store.candidates(partition, now)
        loaded = _build(found)
        if len(self._partitions) >= _MAX_PARTITIONS:
            self._partitions.pop(next(iter(self._partitions)))
        self._partitions[partition] = loaded
        return loaded

    async def best(self, partition: str, vector: np.ndarray[Any, np.dtype[np.float32]],
                   prompt: str, threshold: float, allow_tool_use: bool, now: float
                   ) -> Match | None:
        """The most similar stored prompt at or above ``threshold`` that passes the guard."""
        part = await self._partition(partition, now)
        if not part.keys:
            return None
        scores = part.matrix[:len(part.keys)] @ vector
        above = np.flatnonzero(scores >= threshold)
        mine: Features | None = None
        for i in above[np.argsort(-scores[above])][:_MAX_CHECKED]:
            score = float(scores[i])
            if part.tool_use[i] and not allow_tool_use:
                continue
            if self.guard:
                mine = mine or features(prompt)
                theirs = part.features.get(int(i))
                if theirs is None:
                    theirs = part.features[int(i)] = features(part.prompts[i])
                if not agree_features(mine, theirs)[0]:
                    continue
            if self.verifier is not None and \
                    not self.verifier.accepts(prompt, part.prompts[i], score)[0]:
                return None  # the verifier judges the best candidate the guard let through
            return Match(key=part.keys[i], similarity=score, prompt=part.prompts[i])
        return None

    def added(self, partition: str, key: str, prompt: str, tool_use: bool,
              vector: np.ndarray[Any, np.dtype[np.float32]]) -> None:
        """A new entry this process stored: visible at once to its next lookups."""
        part = self._partitions.get(partition)
        if part is None:
            return
        if key in part.keys:
            return
        n = len(part.keys)
        if part.matrix.shape[0] == 0 or part.matrix.shape[1] != vector.shape[0]:
            part.matrix = np.zeros((8, vector.shape[0]), dtype=np.float32)
            if n:  # vectors of another size: start over with this embedder's
                part.keys, part.prompts, part.tool_use, n = [], [], [], 0
                part.features.clear()
        elif n == part.matrix.shape[0]:  # grow by doubling: adding stays amortised O(1)
            part.matrix = np.vstack([part.matrix, np.zeros_like(part.matrix)])
        part.matrix[n] = vector
        part.keys.append(key)
        part.prompts.append(prompt)
        part.tool_use.append(tool_use)

    def forget(self) -> None:
        self._partitions.clear()


def _build(found: list[Candidate]) -> _Partition:
    vectors = [np.frombuffer(c.vector, dtype=np.float32) for c in found]
    dims = {v.shape[0] for v in vectors}
    if len(dims) > 1:  # vectors of another embedder: only the most common size is comparable
        common = max(dims, key=lambda d: sum(v.shape[0] == d for v in vectors))
        pairs = [(c, v) for c, v in zip(found, vectors, strict=True) if v.shape[0] == common]
        found, vectors = [c for c, _ in pairs], [v for _, v in pairs]
    matrix = np.vstack(vectors) if vectors else np.zeros((0, 1), dtype=np.float32)
    return _Partition(loaded_at=time.monotonic(), keys=[c.key for c in found],
                      prompts=[c.prompt for c in found], tool_use=[c.tool_use for c in found],
                      matrix=matrix)
