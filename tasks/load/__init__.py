"""Load: amoCRM's recipe for importing existing correspondence, for every conversation, recorded in the ledger so
that nothing is sent twice.

Chat created once -> contact found (phone, then email) or created in batches -> chat linked before its first
message -> messages in time order with `silent: true`. Every request whose effect is unknown is resolved by reading
amoCRM before anything is done again (`amojo.resolve`).

    plan.py      which of a batch's messages are new (registered `pending`), moved, gone, to send, to edit, to leave
    prepare.py   a wave of conversations: chats created, contacts resolved (contacts.py), chats linked
    send.py      one conversation's messages: the message state machine and its crash windows
    replies.py   whether a reply quotes the message it answers, or why not
    loader.py    the stages run for a batch, under the run's claims; the Prefect tasks
"""

from .contacts import ContactIndex
from .context import LoadContext, LoadReport
from .loader import load, load_task, resolve_senders, resolve_senders_task
from .plan import DryRun, own_ids, plan, source_rows, withdraw_unseen

__all__ = ["ContactIndex", "DryRun", "LoadContext", "LoadReport", "load", "load_task", "own_ids", "plan",
           "resolve_senders", "resolve_senders_task", "source_rows", "withdraw_unseen"]
