"""The source database: the queries that read one data interval, streamed in chunks, in the source's own time.

The canonical schema of data/schema.sql is read by `CANONICAL` with no configuration; a mapping file (TOML, one
SQL query per entity) adapts any other schema, as long as its queries return the canonical column names.

- `schema`: the canonical columns and tables; `queries`: the queries and the mapping file that replaces them;
- `timestamps`: source times read as unix milliseconds; `window`: which rows belong to an interval;
- `connection`: the engine and the driver's streaming cursor; `stream`: one interval read chunk by chunk;
- `frames`: rows as data frames, values as text; `checks`: the source checked before any request.
"""

from .checks import check_source
from .frames import COMPOUND_TYPES, SourceFrames, as_text, compound_text
from .queries import CANONICAL, SourceQueries, load_queries
from .schema import (
    ATTACHMENT_COLUMNS,
    CLIENT_COLUMNS,
    CONVERSATION_COLUMNS,
    MANAGER_COLUMNS,
    MESSAGE_COLUMNS,
    MESSAGE_OPTIONAL_COLUMNS,
    create_schema,
)
from .stream import SourceStream, open_source, read_unplaced
from .timestamps import to_utc_ms

__all__ = [
    "ATTACHMENT_COLUMNS",
    "CANONICAL",
    "CLIENT_COLUMNS",
    "COMPOUND_TYPES",
    "CONVERSATION_COLUMNS",
    "MANAGER_COLUMNS",
    "MESSAGE_COLUMNS",
    "MESSAGE_OPTIONAL_COLUMNS",
    "SourceFrames",
    "SourceQueries",
    "SourceStream",
    "as_text",
    "check_source",
    "compound_text",
    "create_schema",
    "load_queries",
    "open_source",
    "read_unplaced",
    "to_utc_ms",
]
