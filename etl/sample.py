"""A deterministic sample source database in the canonical schema: the same seed and size give the same rows.

October 2026 of client <-> manager chats in Russian and English, both directions, some media, locations and
contacts, some messages with attachments (a caption and one or two files, or the files alone), some replies to the
message before, five managers (one unknown to amoCRM, one without an amojo_id, some messages with no manager at all),
and three broken rows so that the demo shows its rejects. Rows are generated column-wise with numpy, conversation
batch by conversation batch, so 10 million messages take memory for one batch, not for all of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from .source import create_schema

MONTH_START = np.datetime64("2026-10-01T00:00:00")
OPENING_DAYS = 29
MESSAGES_PER_CONVERSATION = 15
CONVERSATIONS_PER_CLIENT = 2.5
BATCH_CONVERSATIONS = 20_000

MANAGERS = pd.DataFrame({
    "id": ["m1", "m2", "m3", "m4", "m5"],
    "name": ["Анна Смирнова", "Boris Petrov", "Claire Martin", "Дмитрий Орлов", "Elena Volkova"],
    # dmitry has no amojo_id in amoCRM and elena no user at all: both are sent as the bot
    "email": ["anna@example.com", "boris@example.com", "claire@example.com", "dmitry@example.com",
              "elena@example.com"],
})
FIRST_NAMES = np.array(["Иван", "Мария", "Ольга", "Пётр", "Sergey", "Anna", "John", "Emma", "Liam", "Наталья",
                        "Алексей", "Sophie", "Olivia", "Михаил", "Татьяна", "Noah"], dtype=object)
LAST_NAMES = np.array(["Иванов", "Кузнецова", "Соколов", "Попова", "Smith", "Brown", "Taylor", "Wilson", "Лебедев",
                       "Новикова", "Miller", "Davis"], dtype=object)
CLIENT_TEXTS = np.array([
    "Здравствуйте! Можно ли оплатить заказ при получении?",
    "Когда приедет курьер?",
    "Hello, I'd like to change my delivery address.",
    "Is the blue model still in stock?",
    "Спасибо, всё получил 👍",
    "Подскажите, пожалуйста, сроки гарантии.",
    "Can I get an invoice for my company?",
    "Хочу вернуть товар — что нужно сделать?",
    "Thanks, that works for me.",
    "А есть скидка для постоянных клиентов?",
], dtype=object)
MANAGER_TEXTS = np.array([
    "Да, конечно. Вы можете оплатить наличными или картой курьеру.",
    "Курьер будет у вас завтра с 10 до 14.",
    "Sure, I've updated the address on your order.",
    "Yes, it's in stock and ships today.",
    "Рады помочь! Обращайтесь.",
    "Гарантия — 12 месяцев с даты покупки.",
    "Of course — the invoice is on its way to your email.",
    "Оформите возврат в личном кабинете, курьер заберёт товар.",
    "Great, have a nice day!",
    "Для постоянных клиентов действует скидка 5%.",
], dtype=object)
MEDIA = pd.DataFrame({
    "type": ["picture", "file", "voice", "video"],
    "stem": ["photo", "invoice", "voice", "clip"],
    "ext": ["jpg", "pdf", "ogg", "mp4"],
    "size": [245_120, 88_304, None, 3_145_728],
    "named": [True, True, False, True],
})
MESSAGE_COLUMNS = ["id", "conversation_id", "created_at", "updated_at", "direction", "manager_id", "type", "text",
                   "media_url", "file_name", "file_size", "lat", "lon", "contact_name", "contact_phone",
                   "reply_to_id"]
BROKEN_ROWS = ((5, "text", None), (50, "text", "   "), (120, "type", "gif"))


@dataclass(frozen=True)
class SampleSize:
    """How big a sample: messages in all; conversations and clients follow from it unless given."""

    messages: int = 3_000
    conversations: int | None = None
    clients: int | None = None
    even: bool = False
    """Every conversation the same size (a benchmark's fixed shape), instead of sizes that vary as real ones do."""

    @property
    def conversation_count(self) -> int:
        return self.conversations or max(1, self.messages // MESSAGES_PER_CONVERSATION)

    @property
    def client_count(self) -> int:
        return self.clients or max(1, int(self.conversation_count / CONVERSATIONS_PER_CLIENT))


def _clients(rng: np.random.Generator, count: int) -> pd.DataFrame:
    n = np.arange(1, count + 1)
    number = rng.integers(10**8, 10**9, size=count).astype(str)
    digits = pd.Series(np.char.add("9", number))
    styles = [
        "+7 (" + digits.str[:3] + ") " + digits.str[3:6] + "-" + digits.str[6:8] + "-" + digits.str[8:],
        "8 " + digits.str[:3] + " " + digits.str[3:6] + " " + digits.str[6:8] + " " + digits.str[8:],
        "7" + digits,
    ]
    phone = pd.Series(np.select([n % 3 == 0, n % 3 == 1, n % 3 == 2], styles), dtype=object)
    ids = pd.Series(n.astype(str), dtype=object)
    return pd.DataFrame({
        "id": "c" + ids,
        "name": FIRST_NAMES[rng.integers(0, len(FIRST_NAMES), count)] + " " +
                LAST_NAMES[rng.integers(0, len(LAST_NAMES), count)],
        "phone": phone.where(n % 7 != 0, None),
        "email": ("client" + ids + "@example.org").where((n % 3 == 0) | (n % 7 == 0), None),
        "avatar_url": ("https://example.com/avatars/" + ids + ".png").where(n % 4 == 0, None),
        "profile_url": ("https://example.com/clients/" + ids).where(n % 5 == 0, None),
    })


def _conversation_sizes(rng: np.random.Generator, messages: int, conversations: int, even: bool = False
                        ) -> np.ndarray:
    """Message counts per conversation, varied (or as even as the total allows), adding up to exactly `messages`."""
    conversations = min(conversations, messages)
    sizes = np.full(conversations, messages // conversations)
    sizes[: messages % conversations] += 1
    if even:
        return sizes
    half, spread = conversations // 2, int(sizes.min()) // 2
    shift = rng.integers(-spread, spread + 1, size=half)
    sizes[:half] += shift  # what one conversation gains its partner loses: the total stays exact
    sizes[half:2 * half] -= shift
    return rng.permutation(sizes)


def _messages(rng: np.random.Generator, first: int, sizes: np.ndarray, clients: int) -> tuple[pd.DataFrame, ...]:
    """Conversations `first`.. with `sizes` messages each, their messages in time order per conversation, and the
    attachments of some of them."""
    count = len(sizes)
    number = np.arange(first + 1, first + count + 1)
    opened = MONTH_START + rng.integers(0, OPENING_DAYS * 86400, size=count).astype("timedelta64[s]")
    conv_ids = pd.Series(number.astype(str), dtype=object).radd("v")
    conversations = pd.DataFrame({
        "id": conv_ids,
        "client_id": pd.Series(((number * 37) % clients + 1).astype(str), dtype=object).radd("c"),
        "created_at": opened,
    })
    owner = np.repeat(np.arange(count), sizes)
    total = len(owner)
    group_first = np.cumsum(sizes) - sizes  # index of each conversation's first message
    position = np.arange(total) - np.repeat(group_first, sizes)
    gaps = rng.integers(20, 6 * 3600, size=total)  # seconds since the previous message (or the opening)
    running = np.cumsum(gaps)
    elapsed = running - np.repeat(running[group_first] - gaps[group_first], sizes)
    created = opened[owner] + elapsed.astype("timedelta64[s]")
    roll, coin = rng.random(total), rng.random(total)
    incoming = np.where(roll < 0.8, position % 2 == 0, coin < 0.5)
    manager = MANAGERS["id"].to_numpy()[rng.integers(0, len(MANAGERS), size=count)][owner]
    manager = np.where(incoming | (rng.random(total) < 0.1), None, manager)
    kind = rng.random(total)
    media = rng.integers(0, len(MEDIA), size=total)
    is_media, is_location, is_contact = kind < 0.06, (kind >= 0.06) & (kind < 0.07), (kind >= 0.07) & (kind < 0.075)
    text_index = rng.integers(0, len(CLIENT_TEXTS), size=total)
    text = np.where(incoming, CLIENT_TEXTS[text_index], MANAGER_TEXTS[text_index])
    msg_ids = conv_ids.to_numpy()[owner] + "-" + position.astype(str).astype(object)
    media_row = MEDIA.iloc[media].reset_index(drop=True)
    stem = media_row["stem"] + "-" + pd.Series(msg_ids, dtype=object) + "." + media_row["ext"]
    messages = pd.DataFrame({
        "id": msg_ids,
        "conversation_id": conv_ids.to_numpy()[owner],
        "created_at": created,
        "updated_at": pd.NaT,
        "direction": np.where(incoming, "in", "out").astype(object),
        "manager_id": manager,
        "type": np.select([is_media, is_location, is_contact], [media_row["type"].to_numpy(), "location", "contact"],
                          "text").astype(object),
        "text": np.where(is_media | is_location | is_contact, None, text),
        "media_url": ("https://example.com/media/" + stem).where(is_media, None),
        "file_name": stem.where(is_media & media_row["named"].to_numpy(), None),
        "file_size": media_row["size"].where(is_media, None).astype("Int64"),
        "lat": np.where(is_location, 55.75 + rng.random(total) / 10, np.nan),
        "lon": np.where(is_location, 37.61 + rng.random(total) / 10, np.nan),
        "contact_name": np.where(is_contact, "Служба доставки", None),
        "contact_phone": np.where(is_contact, "+74951234567", None),
    })
    # Drawn after the rows above, so that a seed gives the same messages as before attachments and replies.
    replies = (position > 0) & (rng.random(total) < 0.04)
    messages["reply_to_id"] = pd.Series(np.roll(msg_ids, 1), dtype=object).where(replies, None)
    attached = ~(is_media | is_location | is_contact) & (rng.random(total) < 0.03)
    files = np.where(attached, rng.integers(1, 3, size=total), 0)
    messages.loc[attached & (rng.random(total) < 0.5), "text"] = None  # the files alone, no caption
    return conversations, messages, _attachments(rng, msg_ids[files > 0], files[files > 0])


def _attachments(rng: np.random.Generator, message_ids: np.ndarray, files: np.ndarray) -> pd.DataFrame:
    """`files` attachments (pictures and files) for each of these messages, ids 1, 2, ... within each."""
    message_id = np.repeat(message_ids, files)
    number = (np.arange(len(message_id)) - np.repeat(np.cumsum(files) - files, files) + 1).astype(str)
    media = MEDIA.iloc[rng.choice([0, 1], size=len(message_id))].reset_index(drop=True)
    name = media["stem"] + "-" + pd.Series(message_id, dtype=object) + "-" + number + "." + media["ext"]
    return pd.DataFrame({
        "message_id": message_id, "id": number.astype(object), "type": media["type"],
        "media_url": "https://example.com/media/" + name, "file_name": name,
        "file_size": media["size"].astype("Int64"),
    })


def generate(seed: int = 7, size: SampleSize | None = None) -> Iterator[tuple[str, pd.DataFrame]]:
    """(table, rows) batches in a stable order: the same seed and size give the same rows."""
    size = size or SampleSize()
    rng = np.random.default_rng(seed)
    yield "managers", MANAGERS
    yield "clients", _clients(rng, size.client_count)
    sizes = _conversation_sizes(rng, size.messages, size.conversation_count, size.even)
    for first in range(0, len(sizes), BATCH_CONVERSATIONS):
        conversations, messages, attachments = _messages(rng, first, sizes[first:first + BATCH_CONVERSATIONS],
                                                         size.client_count)
        if first == 0:  # rows that break the rules, as real databases do: the demo shows them as rejects
            for row, column, value in BROKEN_ROWS:
                if row < len(messages) and messages.at[row, "type"] == "text":
                    messages.at[row, column] = value
                    attachments = attachments[attachments["message_id"] != messages.at[row, "id"]]
        yield "conversations", conversations
        yield "messages", messages
        yield "attachments", attachments


def _rows(frame: pd.DataFrame, dialect: str) -> list[tuple]:
    """Rows as the driver takes them: None for missing, timestamps as text for SQLite (see etl.source.bound)."""
    out = frame.astype(object).where(frame.notna(), None)
    for column in ("created_at", "updated_at"):
        if column in out:
            values = pd.to_datetime(frame[column])
            if dialect == "sqlite":
                out[column] = values.dt.strftime("%Y-%m-%d %H:%M:%S").astype(object).where(values.notna(), None)
            else:
                out[column] = values.dt.to_pydatetime() if values.notna().all() else \
                    pd.Series(values.dt.to_pydatetime(), dtype=object).where(values.notna(), None)
    return list(out.itertuples(index=False, name=None))


def _insert(conn: sa.Connection, table: str, frame: pd.DataFrame) -> None:
    if frame.empty:  # a small sample may draw no attachment: executemany refuses no rows
        return
    dialect = conn.engine.dialect.name
    columns = list(frame.columns)
    rows = _rows(frame, dialect)
    if dialect == "postgresql":
        with conn.connection.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    marker = "?" if dialect == "sqlite" else "%s"
    conn.exec_driver_sql(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join([marker] * len(columns))})",
                         rows)


def write_sample(url: str, seed: int = 7, size: SampleSize | None = None) -> dict[str, int]:
    """Create the canonical schema at `url` and fill it; returns rows written per table."""
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite" and engine.url.database:
        Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)
    create_schema(engine)
    counts: dict[str, int] = {}
    with engine.begin() as conn:
        for table, frame in generate(seed, size):
            _insert(conn, table, frame)
            counts[table] = counts.get(table, 0) + len(frame)
    engine.dispose()
    return counts
