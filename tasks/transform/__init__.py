"""Transform: one chunk of source rows -> conversations and messages ready to send, and every bad row -> a reject.

- `chunk`: the recipe (`transform`) and its steps; `checks`: what a message must pass to be sent;
- `batch`: what the transform hands on; `clients`: a chunk's chats and clients, phones and emails normalised;
- `rejects`: a bad row's key, reason and detail; `digests`: content, text and chunk digests;
- `text` and `values`: source values repaired and read column-wise.

The bodies amoCRM takes are built from these rows in `amojo.payloads`.
"""

from .batch import Batch, SeenIds, Senders
from .checks import NOT_YET
from .chunk import transform, transform_task
from .clients import normalise_emails, normalise_phones
from .digests import history_hash, source_digest, text_hash
from .rejects import json_lines, source_keys, unplaced_rejects

__all__ = [
    "NOT_YET",
    "Batch",
    "SeenIds",
    "Senders",
    "history_hash",
    "json_lines",
    "normalise_emails",
    "normalise_phones",
    "source_digest",
    "source_keys",
    "text_hash",
    "transform",
    "transform_task",
    "unplaced_rejects",
]
