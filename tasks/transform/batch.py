"""What the transform hands on: a transformed chunk (`Batch`), who manager messages are sent as (`Senders`), and the
message ids already met in the interval (`SeenIds`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pandas as pd


@dataclass(frozen=True)
class Senders:
    """Who manager messages are sent as: the user's `amojo_id` by manager email, else the channel bot."""

    amojo_id_by_email: dict[str, str]
    bot_id: str | None
    bot_name: str = "amojo-etl bot"


@dataclass
class Batch:
    """A transformed chunk.

    `conversations` is indexed by our conversation_id and holds the chat's client; `messages` holds one row per
    valid message, sorted by conversation then time; `rejects` the rows that will not be sent, with the reason.
    """

    conversations: pd.DataFrame
    messages: pd.DataFrame
    rejects: pd.DataFrame
    warnings: Counter = field(default_factory=Counter)

    @property
    def message_count(self) -> int:
        """How many messages are ready to send."""
        return len(self.messages)


class SeenIds:
    """The first row of each message id, across the chunks of one interval.

    The source tells beforehand which ids occur more than once in the interval (`SourceStream.repeated_ids`), so
    only those are remembered: memory follows the number of repeated ids, not the size of the interval. Without
    that list every id is remembered.
    """

    def __init__(self, repeated: set[str] | None = None) -> None:
        self._repeated = repeated
        self._kept: set[str] = set()
        self._duplicate_keys: Counter = Counter()

    def __len__(self) -> int:
        return len(self._kept)

    def split(self, ids: pd.Series) -> pd.Series:
        """True where the id was met before (in an earlier chunk or earlier in this one); remembers the rest."""
        watched = ids.isin(self._repeated) if self._repeated is not None else pd.Series(True, index=ids.index)
        duplicate = pd.Series(False, index=ids.index)
        if watched.any():
            candidates = ids[watched]
            duplicate[watched] = candidates.isin(self._kept) | candidates.duplicated(keep="first")
            self._kept.update(candidates[~duplicate[watched]])
        return duplicate

    def occurrence(self, keys: pd.Series) -> pd.Series:
        """How many times each key of duplicate rows came before in the interval (identical rows share a key)."""
        counts = []
        for key in keys:
            counts.append(self._duplicate_keys[key])
            self._duplicate_keys[key] += 1
        return pd.Series(counts, index=keys.index, dtype="int64")
