"""midway: a plugin-based proxy for the Anthropic Messages API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("midway")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

from midway.context import Midway
from midway.errors import MidwayError, error_body
from midway.exchange import (
    Attempt,
    ErrorKind,
    Exchange,
    PreparedRequest,
    Principal,
    Request,
    Response,
    Retry,
    Upstream,
    Usage,
)
from midway.hookspecs import hookimpl
from midway.sse import SSEEvent

__all__ = [
    "Attempt", "ErrorKind", "Exchange", "Midway", "MidwayError", "PreparedRequest", "Principal",
    "Request", "Response", "Retry", "SSEEvent", "Upstream", "Usage", "__version__",
    "error_body", "hookimpl",
]
