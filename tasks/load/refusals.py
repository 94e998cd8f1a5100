"""amoCRM's refusals of a message's data, as rejects: listed by `amojo-etl rejects` (and its CSV) like the rows the
transform rejects, with the API's reason.

The ledger's message row is the record (`rejected`, its reason and the API's words in `last_error`); the reject
row is derived from it for every chunk a run loads, since a run first forgets its interval's rejects and a refused
message is not sent again until the source changes it.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from amojo.errors import AmojoError
from etl.errors import redact
from etl.ledger import Ledger

from ..transform import json_lines, source_keys
from .plan import source_rows

LEGACY_REASON = "api_refused"
"""The reason of a refusal recorded before the ledger kept it (the API's words are still shown)."""


def refusal_reason(error: AmojoError) -> str:
    """`api_NNN`: the API's error code, else the HTTP status."""
    return f"api_{error.code or error.status}"


def refusal_note(error: AmojoError) -> str:
    """What the ledger keeps of a refusal (the message's `last_error`): its reason, then the API's own words, with
    any secret value removed (an API does not echo them, but a detail is shown to whoever reads the ledger)."""
    return f"{refusal_reason(error)}: {redact(str(error))}"


def _reason_and_detail(note: str | None) -> tuple[str, str]:
    reason, _, detail = (note or "").partition(": ")
    if not reason.startswith("api_") or " " in reason:
        return LEGACY_REASON, f"amoCRM refused the message's data: {note or 'no reason kept'}"
    return reason, f"amoCRM refused the message's data: {detail}"


def refusal_rejects(messages: pd.DataFrame, ledger: Ledger) -> list[dict[str, Any]]:
    """The reject rows of the messages of a batch that the ledger holds as refused for their data."""
    if not len(messages):
        return []
    notes = ledger.messages.refusals(messages["msgid"])
    if not notes:
        return []
    refused = messages[messages["msgid"].isin(notes)]
    shown = source_rows(refused)
    reasons = [_reason_and_detail(notes[msgid]) for msgid in refused["msgid"]]
    return pd.DataFrame({
        "source_key": source_keys(refused["source_id"], refused["msec"], None, shown),
        "reason": [reason for reason, _ in reasons],
        "detail": [detail for _, detail in reasons],
        "row": json_lines(shown),
    }).to_dict("records")
