"""``midway.services[AUDIT]``: what the dashboard and other plugins read."""

from __future__ import annotations

from typing import Any

from midway.services import ServiceKey
from midway_audit.chain import verify
from midway_audit.handoff.channel import WriterChannel
from midway_audit.refusals import RefusalLimit
from midway_audit.stores.queries import Filter
from midway_audit.stores.store import AuditStore


class AuditService:
    def __init__(self, store: AuditStore, writer: WriterChannel | None = None,
                 refusals: RefusalLimit | None = None) -> None:
        self.store = store
        self.writer = writer
        # which refused requests are recorded (see refusals.py)
        self.refusals = refusals or RefusalLimit(60)

    async def query(self, since: Any = None, until: Any = None, principal: str | None = None,
                    model: str | None = None, status: Any = None, text: str | None = None,
                    limit: int = 100) -> list[dict[str, Any]]:
        """Records without bodies, newest first. ``since``/``until``: a datetime, epoch seconds,
        ISO 8601 (naive = UTC) or relative (``"15m"``), as :func:`midway.timeparse.parse_time`
        reads them; ``status``: ``200``, ``"4xx"`` or ``"error"``; ``text``: a substring of the
        record or its bodies."""
        filt = Filter.build(since, until, principal, model, status, text)
        return await self.store.query(filt, max(0, int(limit)))

    async def get(self, request_id: str) -> dict[str, Any] | None:
        """One record with its bodies (``request_body``, ``response_body``: redacted text)."""
        return await self.store.get(request_id)

    async def verify(self) -> dict[str, Any]:
        return (await verify(self.store)).as_dict()

    def status(self) -> dict[str, Any]:
        """The writer's state: last committed seq and hash, queue depth, written, dropped."""
        return self.writer.status() if self.writer is not None else {}


# What other plugins (the dashboard) look up: midway.services.get(AUDIT).
AUDIT: ServiceKey[AuditService] = ServiceKey("audit")
