"""The randomized fault campaign (issue 12), a fixed set of seeds: lost answers and odd statuses on every endpoint,
history lag, two overlapping runs on one PostgreSQL ledger with kills at random moments and source edits between
rounds, then settling with faults off; at the end amoCRM must hold every message exactly once with its latest
text, one chat per conversation, one contact per client, one link per chat, each chat in time order.
What a schedule does: tests/fault_campaign.py. Many more seeds: bench/fault_campaign.py."""

from __future__ import annotations

import pytest
from fault_campaign import TEXT_LIMIT, check, read_expected, run_schedule, write_campaign_source

from amojo.payloads import contact_key

# Chosen from `bench/fault_campaign.py --seeds 50` for their mix, at about 10-18 s each: crashes and cancels (1, 3,
# 12, 18, 28, 43), 409 answers (3, 18, 28), duplicate msgids refused (18, 28), dropped connections (12, 18, 43),
# history lag up to 2.7 s (1, 3, 12, 43), chunks of 100 rows (1, 3, 12, 18, 28).
SEEDS = [1, 3, 12, 18, 28, 43]
# Every schedule also has clients who are one person spelled otherwise and texts amoCRM refuses; some have contacts
# merged or deleted, late contact commits, unsent rows retimed, moved or deleted. Cross-day seed 0: a failed night,
# then a nightly run that looks back first.
CROSS_DAY_SEEDS = [0]


@pytest.mark.campaign
@pytest.mark.postgres
@pytest.mark.parametrize(("seed", "cross_day"), [(s, False) for s in SEEDS] + [(s, True) for s in CROSS_DAY_SEEDS])
async def test_a_fault_schedule_leaves_amocrm_exactly_as_the_source(seed, cross_day, postgres_url, tmp_path):
    result = await run_schedule(seed, postgres_url, tmp_path, cross_day=cross_day)
    assert result.passed, f"{len(result.violations)} violations:\n" + "\n".join(result.violations) + \
        "\n\n" + result.describe()


def _perfect_snapshot(expected) -> dict:
    """What amoCRM should hold for `expected`, in the shape of the emulator's snapshot."""
    chats = [{"id": f"chat-{c}", "conversation_id": c} for c in sorted(expected.client_of)]
    messages: dict[str, list[dict]] = {chat["id"]: [] for chat in chats}
    for msgid in sorted(expected.texts, key=expected.msec.__getitem__):
        chat_id = f"chat-{expected.conversation_of[msgid]}"
        messages[chat_id].append({"msgid": msgid, "chat_id": chat_id, "msec_timestamp": expected.msec[msgid],
                                  "message": {"type": "text", "text": expected.texts[msgid]}, "unlinked": False})
    people = sorted(set(expected.person_of.values()))
    contact_of = {person: 1000 + n for n, person in enumerate(people)}
    contacts = [{"id": i, "values": [contact_key(person)]} for person, i in contact_of.items()]
    links = [{"chat_id": chat["id"],
              "contact_id": contact_of[expected.person_of[expected.client_of[chat["conversation_id"]]]]}
             for chat in chats]
    return {"chats": chats, "messages": messages, "contacts": contacts, "links": links}


def test_the_checks_name_each_kind_of_violation(tmp_path):
    source = f"sqlite:///{tmp_path / 'source.db'}"
    write_campaign_source(source)
    expected = read_expected(source)
    snapshot = _perfect_snapshot(expected)
    assert check(snapshot, expected) == []

    chat = snapshot["messages"]["chat-ae-cv1"]
    chat.append(dict(chat[2]))  # ae-cv1-2 twice (and, last, out of order)
    lost = snapshot["messages"]["chat-ae-dv3"].pop(4)
    snapshot["messages"]["chat-ae-cv5"][0] = {**snapshot["messages"]["chat-ae-cv5"][0], "message": {"text": "old"}}
    later = snapshot["messages"]["chat-ae-dv0"]
    later[5], later[6] = later[6], later[5]
    refused = snapshot["messages"]["chat-ae-dv1"]
    refused.append(refused.pop(3))  # refused, then sent later: out of order by design
    snapshot["contacts"].append({"id": 5000, "values": [contact_key("ae-cl2")]})
    relinked = next(link for link in snapshot["links"] if link["chat_id"] == "chat-ae-dv6")
    relinked["contact_id"] = 5000  # dv6 is cl10's, who is cl2 (cv2, dv2): one person, two contacts
    merged = next(link for link in snapshot["links"] if link["chat_id"] == "chat-ae-dv4")  # cl8's, not cl0's
    merged["contact_id"] = next(link["contact_id"] for link in snapshot["links"] if link["chat_id"] == "chat-ae-cv0")
    gone = next(link for link in snapshot["links"] if link["chat_id"] == "chat-ae-cv6")
    gone["contact_id"] = 6000
    long = sorted(expected.texts)[0]
    expected.texts[long] = "x" * (TEXT_LIMIT + 1)  # amoCRM refuses it, yet holds it
    snapshot["links"] = [link for link in snapshot["links"] if link["chat_id"] != "chat-ae-cv7"]
    snapshot["chats"].append({"id": "chat-again", "conversation_id": "ae-cv4"})
    snapshot["messages"]["chat-again"] = []

    found = check(snapshot, expected, refused={"ae-dv1-3"})
    assert "chat of ae-cv7: 0 links, not 1" not in check(snapshot, expected, unlinked={"chat-ae-cv7"})
    assert sorted(found) == sorted([
        "conversation ae-cv4: 2 chats, not 1",
        "duplicate: ae-cv1-2 is in amoCRM 2 times",
        f"lost: {lost['msgid']} is not in amoCRM",
        "stale text: ae-cv5-0 says 'old', the source 'message 0 of cv5'",
        f"refused data sent: {long} is in amoCRM with a text longer than {TEXT_LIMIT}",
        "order: in ae-cv1, ae-cv1-2 arrived after ae-cv1-9, which is later",
        "order: in ae-dv0, ae-dv0-5 arrived after ae-dv0-6, which is later",
        "contacts: 10 in amoCRM for 9 persons",  # 12 clients, of whom cl9, cl10, cl11 are cl1, cl2, cl3
        "person ae-cl10/ae-cl2: chats linked to 2 contacts ([1002, 5000]), not 1",
        "contact 1000 holds the chats of 2 persons (['ae-cl0', 'ae-cl8'])",
        "contact 1006 holds no chat: made for nobody, or twice for someone",  # cl6's: cv6 went to 6000
        "contact 1007 holds no chat: made for nobody, or twice for someone",  # cl7's: cv7 lost its link
        "contact 1008 holds no chat: made for nobody, or twice for someone",  # cl8's: dv4 went to 1000
        "chat of ae-cv6 is linked to contact 6000, which amoCRM does not hold",
        "chat of ae-cv7: 0 links, not 1",
        "chat of ae-cv4: 0 links, not 1",
    ]), found
