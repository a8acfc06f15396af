"""Core variants: midway relaying through aiohttp's client instead of its own lean one; midway
with an ``on_chunk`` plugin that observes no stream (the opt-in costs nothing unused)."""

from pathlib import Path

VARIANTS = [
    dict(name="midway-aiohttp-client", plugins=[],
         config={"midway": {"upstream_client": "aiohttp"}}, workloads=["json", "stream"]),
    dict(name="midway-no-access-log", plugins=[], workloads=["json", "stream"],
         config={"midway": {"access_log": False}}),
    dict(name="midway+chunk-unobserved", plugins=[], workloads=["json", "stream"],
         extra=[str(Path(__file__).with_name("chunk_unobserved_plugin.py"))]),
]
