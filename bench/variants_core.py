"""Core variants: midway relaying through aiohttp's client instead of its own lean one."""

VARIANTS = [
    dict(name="midway-aiohttp-client", plugins=[],
         config={"midway": {"upstream_client": "aiohttp"}}, workloads=["json", "stream"]),
]
