"""``midway replay SESSION``: a recorded Claude Code session's requests, sent again through
midway's own pipeline to another upstream, model or config, and compared turn by turn.

* :mod:`.session` finds the session's records in the audit trail (through
  :class:`~midway_audit.stores.store.AuditStore`) and refuses what cannot be replayed;
* :mod:`.runner` runs them through an in-process midway built from the given config, on a
  loopback port, within the bounds (turns, budget, timeout, concurrency);
* :mod:`.report` compares each replayed answer with the recorded one (the divergence) and
  prints the report;
* :mod:`.command` is the click command.
"""

from __future__ import annotations

from midway_audit.replay.session import ReplayRefused, Session, Turn, find_session

__all__ = ["ReplayRefused", "Session", "Turn", "find_session"]
