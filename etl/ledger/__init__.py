"""The ledger: what has been done in amoCRM, kept in the state database so that runs resume and never repeat.

One `Ledger` per database, its tables grouped by concern: `messages` (and their statuses, `status.py`), `chats`,
`contacts` (and the `persons` they resolve) and `effects` (requests whose outcome is unknown), `intervals`,
`rejects` and `audits` of runs, `leases` of concurrent runs, and the `account`'s scope and OAuth pair.
"""

from __future__ import annotations

from .chats import Chats, ChatState, Contacts, Effects
from .database import Database
from .leases import Leases
from .messages import Messages, MessageState
from .runs import Account, Audits, Intervals, Rejects
from .schema import KEY_LENGTH, SCHEMA_VERSION
from .status import DONE, MOVABLE, NEEDS_EDIT_HASH, UNCERTAIN, UNSENT, MessageStatus

__all__ = ["DONE", "KEY_LENGTH", "MOVABLE", "NEEDS_EDIT_HASH", "SCHEMA_VERSION", "UNCERTAIN", "UNSENT", "ChatState",
           "Ledger", "MessageState", "MessageStatus"]


class Ledger:
    """The state database behind one account's imports (SQLite file by default, PostgreSQL for many workers)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.db = Database(url)
        self.engine = self.db.engine
        self.messages = Messages(self.db)
        self.chats = Chats(self.db)
        self.contacts = Contacts(self.db)
        self.effects = Effects(self.db)
        self.intervals = Intervals(self.db)
        self.rejects = Rejects(self.db)
        self.audits = Audits(self.db)
        self.leases = Leases(self.db)
        self.account = Account(self.db)

    def clock(self) -> float:
        """Now, in seconds since the epoch, as the ledger database sees it: the one clock that claims expire by,
        whatever the workers' own clocks say. A SQLite ledger is a local file: its clock is this machine's."""
        with self.engine.connect() as conn:
            return self.db.now(conn)

    def schema_version(self) -> int:
        return self.db.schema_version()

    def close(self) -> None:
        self.db.close()
