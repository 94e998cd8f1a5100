"""The ceiling probe: a minimal sender, in a process of its own, with one keep-alive connection per conversation.

What the wire and the emulator allow with nothing of the product in the way: stdlib `http.client` in one thread
per conversation, each request signed, each message awaited before the next one of its conversation (as the
product keeps conversation order). Prints one JSON object: messages sent, seconds, CPU seconds.

    python bench/ceiling_probe.py URL --conversations 40 --messages 250
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amojo.emulator import config as demo  # noqa: E402
from amojo.signing import CONTENT_TYPE, content_md5, rfc2822_date, signature  # noqa: E402

BASE = "/v2/origin/custom"


def post(connection: http.client.HTTPConnection, path: str, body: dict) -> dict:
    data = json.dumps(body).encode()
    md5, date = content_md5(data), rfc2822_date()
    connection.request("POST", path, body=data, headers={
        "Date": date, "Content-Type": CONTENT_TYPE, "Content-MD5": md5,
        "X-Signature": signature(demo.DEMO_CHANNEL_SECRET, "POST", md5, CONTENT_TYPE, date, path)})
    response = connection.getresponse()
    answer = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status} {answer[:200]!r}")
    return json.loads(answer) if answer else {}


def lane(host: str, port: int, scope: str, conversation: int, messages: int) -> None:
    connection = http.client.HTTPConnection(host, port, timeout=30)
    conversation_id, client = f"ceiling-{conversation}", {"id": f"ceiling-client-{conversation}", "name": "Client"}
    post(connection, f"{BASE}/{scope}/chats", {"conversation_id": conversation_id, "user": client})
    for n in range(messages):
        post(connection, f"{BASE}/{scope}", {"event_type": "new_message", "payload": {
            "timestamp": 1_700_000_000 + n, "msec_timestamp": 1_700_000_000_000 + n, "msgid": f"{conversation_id}-{n}",
            "conversation_id": conversation_id, "silent": True, "sender": client,
            "message": {"type": "text", "text": f"message {n} of conversation {conversation}"}}})
    connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("--conversations", type=int, default=40)
    parser.add_argument("--messages", type=int, default=250)
    args = parser.parse_args()
    parts = urlsplit(args.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    scope = post(connection, f"{BASE}/{demo.DEMO_CHANNEL_ID}/connect",
                 {"account_id": demo.DEMO_ACCOUNT_ID, "title": "ceiling", "hook_api_version": "v2"})["scope_id"]
    cpu, began = time.process_time(), time.perf_counter()
    lanes = [threading.Thread(target=lane, args=(parts.hostname, parts.port, scope, c, args.messages))
             for c in range(args.conversations)]
    for thread in lanes:
        thread.start()
    for thread in lanes:
        thread.join()
    print(json.dumps({"sent": args.conversations * args.messages, "seconds": time.perf_counter() - began,
                      "cpu_s": time.process_time() - cpu}))


if __name__ == "__main__":
    main()
