"""The relay → writer hand-off: the relay copies intents and records into a shared ring
(:mod:`.ring`, framed by :mod:`.frames`) and wakes the writer process over a socket
(:mod:`.channel`); the writer process (:mod:`.writer_process`) commits intents in groups
(:mod:`.intents`) and records in batches (:mod:`.writer`).

Dependencies point one way: ``handoff`` writes through :mod:`midway_audit.stores` (and uses the
record's modules: ``record``, ``redact``, ``config``); ``stores`` never imports ``handoff``.
"""
