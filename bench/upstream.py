"""The benchmark's upstream: the fake Anthropic API answering every request the same way.

``python bench/upstream.py PORT DELTAS`` — a JSON or streaming (DELTAS text deltas) answer,
whichever the request asks for.
"""

from __future__ import annotations

import logging
import sys

import uvloop
from aiohttp import web

from midway.fake_upstream import FakeAnthropic, Reply


def main() -> None:
    port, deltas = int(sys.argv[1]), int(sys.argv[2])
    fake = FakeAnthropic()
    text = "".join(f"word{i} " for i in range(deltas))
    reply = Reply(content=[{"type": "text", "text": text}], text_chunks=deltas,
                  usage={"input_tokens": 250, "output_tokens": deltas * 2})
    fake.default = lambda request: reply
    fake.requests = _Discard()  # type: ignore[assignment]  # keep memory flat under load
    # wrk drops its connections when a run ends: the resulting write errors are expected.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    uvloop.install()
    web.run_app(fake.app, host="127.0.0.1", port=port, print=None, access_log=None)


class _Discard(list):  # type: ignore[type-arg]
    def append(self, item: object) -> None:
        pass


if __name__ == "__main__":
    main()
