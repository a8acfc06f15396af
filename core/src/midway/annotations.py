"""The names of ``exchange.annotations`` that more than one package reads or writes.

Plugins publish findings for each other in ``exchange.annotations``; a key written by one
package and read by another is named here, so that writer and readers agree by construction.
Values stay plain JSON-able data (audit records them as they are).
"""

from __future__ import annotations

#: billing: the request's cost in US dollars, a ``str`` of a ``Decimal`` (``"0"`` when free)
COST_USD = "cost_usd"
#: billing: details of the charge (a dict: reservation, warnings, whether it was unpriced)
BILLING = "billing"
#: cache: what the cache did with the request, one of :data:`CACHE_RESULTS`
CACHE = "cache"
#: cache: the similarity of a semantic (or shadow) hit, a float in [0, 1]
CACHE_SIMILARITY = "cache_similarity"
#: router: the name of the routing rule that chose the upstream
ROUTE = "route"
#: router: the fingerprint of the upstream key the request went out with
UPSTREAM_KEY = "upstream_key"
#: core: the ``input_tokens`` of a ``/v1/messages/count_tokens`` answer
COUNT_TOKENS = "count_tokens"

# The values of ``annotations[CACHE]``.
CACHE_HIT = "hit"
CACHE_SEMANTIC_HIT = "semantic-hit"
CACHE_SHADOW_HIT = "shadow-hit"  # a semantic match that was measured, not served
CACHE_MISS = "miss"
CACHE_BYPASS = "bypass"
CACHE_RESULTS = frozenset({CACHE_HIT, CACHE_SEMANTIC_HIT, CACHE_SHADOW_HIT, CACHE_MISS,
                           CACHE_BYPASS})
#: the values that mean the cache answered the request itself
CACHE_HITS = frozenset({CACHE_HIT, CACHE_SEMANTIC_HIT})
