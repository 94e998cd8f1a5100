"""Extract + transform throughput and peak memory, beside a naive per-row baseline run in the same process.

For each source (SQLite file, PostgreSQL schema) and size, the sample database is made once and kept (SQLite
under bench/out/, PostgreSQL in schema bench_N of AMOJO_ETL_BENCH_POSTGRES_URL). The vectorised path is the
pipeline's own: SourceStream chunks -> transform(). The baseline reads the same rows and builds one payload
dict per row in Python, as a hand-written exporter would.

    ./uvw run python bench/extract_transform.py                      # 1M, SQLite and PostgreSQL
    ./uvw run python bench/extract_transform.py --messages 1000000 10000000
    ./uvw run python bench/extract_transform.py --sources sqlite --baseline-rows 200000
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amojo.payloads import MEDIA_TYPES, MESSAGE_TYPES  # noqa: E402
from etl.intervals import Interval  # noqa: E402
from etl.sample import SampleSize, write_sample  # noqa: E402
from etl.source import CANONICAL, SourceStream  # noqa: E402
from tasks.transform import SeenIds, Senders, transform  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
POSTGRES = os.environ.get("AMOJO_ETL_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
UTC = ZoneInfo("UTC")
MONTH = Interval.days(date(2026, 9, 1), date(2026, 12, 1), UTC)
SENDERS = Senders({"anna@example.com": "a1", "boris@example.com": "a2", "claire@example.com": "a3"}, "bot")


class PeakRss:
    """Peak resident memory during a block, sampled from /proc (ru_maxrss cannot be reset between phases)."""

    def __enter__(self) -> PeakRss:
        self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def source_url(kind: str, messages: int) -> str:
    if kind == "sqlite":
        path = OUT / f"sample-{messages}.db"
        url = f"sqlite:///{path}"
        if not path.exists():
            OUT.mkdir(exist_ok=True)
            print(f"  making {path.name} ...", flush=True)
            write_sample(url, size=SampleSize(messages=messages))
        return url
    schema = f"bench_{messages}"
    engine = sa.create_engine(POSTGRES)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {schema}"))
        exists = conn.execute(sa.text(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = :s AND table_name = 'messages'"),
            {"s": schema}).scalar()
    engine.dispose()
    url = sa.make_url(POSTGRES).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)
    if not exists:
        print(f"  making schema {schema} ...", flush=True)
        write_sample(url, size=SampleSize(messages=messages))
    return url


def vectorised(url: str) -> int:
    count = 0
    with SourceStream(url, CANONICAL, MONTH.start, MONTH.end, UTC, chunk_size=50_000) as stream:
        seen = SeenIds(stream.repeated_ids())
        while (frames := stream.next_chunk()) is not None:
            batch = transform(frames, SENDERS, "ae-", UTC, seen=seen)
            count += batch.message_count + len(batch.rejects)
    return count


PER_ROW_QUERY = """
SELECT m.id, m.conversation_id, m.created_at, m.direction, m.manager_id, m.type, m.text, m.media_url, m.file_name,
       m.file_size, m.lat, m.lon, m.contact_name, m.contact_phone, c.client_id, k.name AS client_name,
       k.phone AS client_phone, k.email AS client_email, mg.email AS manager_email, mg.name AS manager_name
FROM messages m
LEFT JOIN conversations c ON c.id = m.conversation_id
LEFT JOIN clients k ON k.id = c.client_id
LEFT JOIN managers mg ON mg.id = m.manager_id
WHERE m.created_at >= :start AND m.created_at < :end
ORDER BY m.created_at, m.id
"""


def per_row(url: str, limit: int) -> int:
    """The hand-written exporter: one JOIN, then every check and conversion in Python, one dict per row.

    It does the transform's work (dedup, every reject check, zone conversion, phone and email normalisation,
    manager mapping, the payload with sender and receiver), so the two rates compare like with like.
    """
    engine = sa.create_engine(url)
    seen: set[str] = set()
    count = 0
    bounds = {"start": MONTH.start.replace(tzinfo=None), "end": MONTH.end.replace(tzinfo=None)}
    if engine.dialect.name == "sqlite":
        bounds = {k: v.isoformat(sep=" ") for k, v in bounds.items()}
    now_ms = time.time() * 1000
    phone_digits = re.compile(r"\D")
    with engine.connect().execution_options(stream_results=True, yield_per=10_000) as conn:
        result = conn.execute(sa.text(PER_ROW_QUERY + f" LIMIT {limit}"), bounds)
        for row in result.mappings():
            message_id = str(row["id"])
            if message_id in seen:
                continue
            seen.add(message_id)
            kind = (row["type"] or "text").strip().lower()
            direction = (row["direction"] or "").strip().lower()
            created = row["created_at"]
            if isinstance(created, str):
                created = datetime.fromisoformat(created)
            msec = int(created.replace(tzinfo=UTC).timestamp() * 1000)
            text = row["text"]
            if (row["client_id"] is None or direction not in ("in", "out") or kind not in MESSAGE_TYPES
                    or not 0 <= msec <= now_ms or (kind == "text" and not (text or "").strip())
                    or (kind in MEDIA_TYPES and not str(row["media_url"] or "").startswith(("http://", "https://")))
                    or (kind == "location" and (row["lat"] is None or row["lon"] is None))
                    or (kind == "contact" and (row["contact_name"] is None or row["contact_phone"] is None))):
                continue
            digits = phone_digits.sub("", row["client_phone"] or "")
            if len(digits) == 11 and digits[0] == "8":
                digits = "7" + digits[1:]
            elif len(digits) == 10 and digits[0] == "9":
                digits = "7" + digits
            profile = {}
            if 10 <= len(digits) <= 15:
                profile["phone"] = "+" + digits
            email = (row["client_email"] or "").strip().lower()
            if "@" in email:
                profile["email"] = email
            client = {"id": f"ae-{row['client_id']}", "name": row["client_name"] or f"Client {row['client_id']}"}
            if profile:
                client["profile"] = profile
            message = {"type": kind}
            if text and text.strip():
                message["text"] = text
            if kind in MEDIA_TYPES:
                message.update(media=row["media_url"], file_name=row["file_name"] or "file",
                               file_size=int(row["file_size"] or 0))
            elif kind == "location":
                message["location"] = {"lat": float(row["lat"]), "lon": float(row["lon"])}
            elif kind == "contact":
                message["contact"] = {"name": row["contact_name"], "phone": row["contact_phone"]}
            payload = {"timestamp": msec // 1000, "msec_timestamp": msec, "msgid": f"ae-{message_id}",
                       "conversation_id": f"ae-{row['conversation_id']}", "message": message, "silent": True}
            if direction == "out":
                ref_id = SENDERS.amojo_id_by_email.get((row["manager_email"] or "").lower()) or SENDERS.bot_id
                payload["sender"] = {"id": f"ae-manager-{row['manager_id']}", "ref_id": ref_id,
                                     "name": row["manager_name"] or SENDERS.bot_name}
                payload["receiver"] = client
            else:
                payload["sender"] = client
            count += 1
    engine.dispose()
    return count


def measure(label: str, run: Callable[[], int]) -> tuple[float, int, int]:
    with PeakRss() as rss:
        began = time.perf_counter()
        rows = run()
        seconds = time.perf_counter() - began
    print(f"    {label:34} {rows:>10,} rows {seconds:7.1f} s {rows / seconds:>10,.0f} msg/s "
          f"peak RSS {rss.peak / 2**20:7.0f} MiB", flush=True)
    return rows / seconds, rss.peak, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--sources", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    parser.add_argument("--baseline-rows", type=int, default=1_000_000,
                        help="rows the per-row baseline reads (it is slow; its rate is per message)")
    args = parser.parse_args()
    print(f"extract + transform, chunks of 50,000, {os.cpu_count()} cores")
    for kind in args.sources:
        for messages in args.messages:
            print(f"  {kind}, {messages:,} messages")
            url = source_url(kind, messages)
            fast, _, _ = measure("vectorised (pipeline)", lambda url=url: vectorised(url))
            slow, _, _ = measure(f"per-row baseline (first {min(messages, args.baseline_rows):,})",
                                 lambda url=url, m=messages: per_row(url, min(m, args.baseline_rows)))
            print(f"    ratio vectorised / per-row: {fast / slow:.1f}x", flush=True)


if __name__ == "__main__":
    main()
