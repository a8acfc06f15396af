"""Where the audit trail is kept: one store over SQLite and PostgreSQL (:mod:`.store`), its
tables (:mod:`.schema`) and the filters and row shapes of its reads (:mod:`.queries`).

Dependencies point one way: ``stores`` builds on :mod:`midway.storage` and on the record's
own modules (``chain``, ``parts``, ``record``, ``config``); it never imports
:mod:`midway_audit.handoff`, which writes through it.
"""
