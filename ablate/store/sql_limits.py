"""The default limits of ``ablate query --sql`` (:mod:`ablate.store.readonly_sql`), in a module that
imports nothing, so the CLI can show them in ``--help`` without loading SQLAlchemy."""

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_ROWS = 100_000
# Rows held in Python (readonly_sql.row_bytes). 64 MiB keeps `ablate query --sql` at a few hundred MB
# at its peak, with the DataFrame and the printed text made from the rows (tests/test_sql_bounds.py).
DEFAULT_MAX_BYTES = 64 * 2**20
