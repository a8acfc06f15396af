"""Requests nobody known made (``Exchange.unauthenticated``): anyone can send them without
limit, so each is recorded compactly (no bodies, no headers) and those midway refused itself
are recorded at most ``refused_per_minute`` times per client address and minute; the rest are
only counted (``midway_audit_records_dropped{reason="refused_rate_limited"}``)."""

from __future__ import annotations

# Addresses tracked at once: an attacker with many addresses (IPv6) cannot grow this either;
# when it is full of this minute's addresses, a new one is counted, not recorded.
MAX_ADDRESSES = 4096


class RefusalLimit:
    """At most ``per_minute`` records per client address in each minute (wall-clock windows)."""

    def __init__(self, per_minute: int, max_addresses: int = MAX_ADDRESSES) -> None:
        self.per_minute = per_minute
        self.max_addresses = max_addresses
        self.window = -1
        self.counts: dict[str, int] = {}

    def admit(self, address: str, now: float) -> bool:
        window = int(now // 60)
        if window != self.window:
            self.window = window
            self.counts.clear()
        count = self.counts.get(address)
        if count is None:
            if len(self.counts) >= self.max_addresses:
                return False
            count = 0
        if count >= self.per_minute:
            return False
        self.counts[address] = count + 1
        return True
