"""A deterministic sample source database in the canonical schema: the same seed gives the same rows, always.

A month of client <-> manager chats in Russian and English, both directions, some media, several managers (one
unknown to amoCRM, one without an amojo_id, some messages with no manager at all), and a few broken rows so
that the demo shows its rejects.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from .source import create_schema

MONTH_START = datetime(2026, 10, 1)
DAYS = 31

MANAGERS = [
    ("m1", "Анна Смирнова", "anna@example.com"),
    ("m2", "Boris Petrov", "boris@example.com"),
    ("m3", "Claire Martin", "claire@example.com"),
    ("m4", "Дмитрий Орлов", "dmitry@example.com"),  # in amoCRM without an amojo_id: sent as the bot
    ("m5", "Elena Volkova", "elena@example.com"),  # not in amoCRM at all: sent as the bot
]

FIRST_NAMES = ["Иван", "Мария", "Ольга", "Пётр", "Sergey", "Anna", "John", "Emma", "Liam", "Наталья", "Алексей",
               "Sophie", "Olivia", "Михаил", "Татьяна", "Noah"]
LAST_NAMES = ["Иванов", "Кузнецова", "Соколов", "Попова", "Smith", "Brown", "Taylor", "Wilson", "Лебедев",
              "Новикова", "Miller", "Davis"]

CLIENT_TEXTS = [
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
]
MANAGER_TEXTS = [
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
]
MEDIA = [
    ("picture", "https://example.com/media/photo-{n}.jpg", "photo-{n}.jpg", 245_120),
    ("file", "https://example.com/media/invoice-{n}.pdf", "invoice-{n}.pdf", 88_304),
    ("voice", "https://example.com/media/voice-{n}.ogg", None, None),
    ("video", "https://example.com/media/clip-{n}.mp4", "clip-{n}.mp4", 3_145_728),
]


@dataclass(frozen=True)
class SampleSize:
    clients: int = 80
    conversations: int = 200
    messages_per_conversation: tuple[int, int] = (4, 26)


def _phone(rng: random.Random, n: int) -> str:
    digits = f"9{rng.randrange(10**8, 10**9):09d}"
    styles = [f"+7 ({digits[:3]}) {digits[3:6]}-{digits[6:8]}-{digits[8:]}", f"8 {digits[:3]} {digits[3:6]} "
              f"{digits[6:8]} {digits[8:]}", f"7{digits}"]
    return styles[n % 3]


def generate(seed: int = 7, size: SampleSize | None = None) -> Iterator[tuple[str, list[dict]]]:
    """Rows table by table, as (table, rows) batches, in a stable order for the same seed."""
    size = size or SampleSize()
    rng = random.Random(seed)
    yield "managers", [{"id": i, "name": n, "email": e} for i, n, e in MANAGERS]

    clients = []
    for n in range(1, size.clients + 1):
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        clients.append({
            "id": f"c{n}",
            "name": name,
            "phone": _phone(rng, n) if n % 7 else None,
            "email": f"client{n}@example.org" if n % 3 == 0 or n % 7 == 0 else None,
            "avatar_url": f"https://example.com/avatars/{n}.png" if n % 4 == 0 else None,
            "profile_url": f"https://example.com/clients/{n}" if n % 5 == 0 else None,
        })
    yield "clients", clients

    conversations, messages = [], []
    for n in range(1, size.conversations + 1):
        client = clients[(n * 37) % len(clients)]
        opened = MONTH_START + timedelta(seconds=rng.randrange(0, (DAYS - 2) * 86400))
        conversations.append({"id": f"v{n}", "client_id": client["id"], "created_at": opened})
        manager = MANAGERS[rng.randrange(len(MANAGERS))][0]
        at = opened
        for k in range(rng.randint(*size.messages_per_conversation)):
            at += timedelta(seconds=rng.randrange(20, 6 * 3600))
            incoming = k % 2 == 0 if rng.random() < 0.8 else rng.random() < 0.5
            row = {
                "id": f"v{n}-{k}", "conversation_id": f"v{n}", "created_at": at, "updated_at": None,
                "direction": "in" if incoming else "out",
                "manager_id": None if incoming else (manager if rng.random() < 0.9 else None),
                "type": "text", "text": rng.choice(CLIENT_TEXTS if incoming else MANAGER_TEXTS),
                "media_url": None, "file_name": None, "file_size": None, "lat": None, "lon": None,
                "contact_name": None, "contact_phone": None,
            }
            roll = rng.random()
            if roll < 0.06:
                kind, url, file_name, file_size = MEDIA[rng.randrange(len(MEDIA))]
                row.update(type=kind, text=None, media_url=url.format(n=f"{n}-{k}"),
                           file_name=file_name.format(n=f"{n}-{k}") if file_name else None, file_size=file_size)
            elif roll < 0.07:
                row.update(type="location", text=None, lat=55.75 + rng.random() / 10, lon=37.61 + rng.random() / 10)
            elif roll < 0.075:
                row.update(type="contact", text=None, contact_name="Служба доставки", contact_phone="+74951234567")
            messages.append(row)
    # A few rows that break the rules, as real databases do: the demo shows them as rejects.
    messages[5]["text"] = None
    messages[50]["text"] = "   "
    messages[120]["type"] = "gif"
    yield "conversations", conversations
    yield "messages", messages


def _as_source_time(engine: sa.Engine, rows: list[dict]) -> list[dict]:
    """SQLite keeps timestamps as text: write them in the form `etl.source.bound` compares with."""
    if engine.dialect.name != "sqlite":
        return rows
    out = []
    for row in rows:
        row = dict(row)
        for key in ("created_at", "updated_at"):
            if isinstance(row.get(key), datetime):
                row[key] = row[key].isoformat(sep=" ", timespec="seconds")
        out.append(row)
    return out


def write_sample(url: str, seed: int = 7, size: SampleSize | None = None) -> dict[str, int]:
    """Create the canonical schema at `url` and fill it; returns rows written per table."""
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite" and engine.url.database:
        Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)
    create_schema(engine)
    counts: dict[str, int] = {}
    with engine.begin() as conn:
        for table, rows in generate(seed, size):
            columns = list(rows[0])
            statement = sa.text(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"
            )
            conn.execute(statement, _as_source_time(engine, rows))
            counts[table] = len(rows)
    engine.dispose()
    return counts
