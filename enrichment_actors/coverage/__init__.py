"""Coverage: what the product already holds, so that no request is spent twice.

:mod:`.tiles` cuts a job's box into tiles of a global grid, :mod:`.ledger`
records what each tile and tag set last returned (PostgreSQL or SQLite, beside
``pois``), and :mod:`.claims` keeps two jobs from fetching the same tile at
once (on the fleet's state backend). docs/architecture.md, "Coverage", says
how they fit together.
"""
