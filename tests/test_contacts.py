"""Contacts resolved by a search per client or by one page-through of the account: the same contacts, the same
quarantines, either way; the page-through in fewer requests."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from load_harness import run_interval, settings_for, write_source

from amojo.rest import RestClient
from tasks.load import ContactIndex


def _phone(value: str) -> dict:
    return {"field_code": "PHONE", "values": [{"value": value, "enum_code": "WORK"}]}


def _email(value: str) -> dict:
    return {"field_code": "EMAIL", "values": [{"value": value, "enum_code": "WORK"}]}


async def _account(emulator) -> dict[str, int]:
    """An account that already holds contacts: cl1 by phone typed another way, cl3 by email in capitals, cl5 twice
    (ambiguous), and 300 others, so that a page-through takes two pages."""
    async with RestClient(emulator.url, emulator.emulator.config.token, rate=1000) as rest:
        others = [{"name": f"Someone {n}", "custom_fields_values": [_phone(f"+7 495 {n:07d}")]} for n in range(300)]
        await rest.create_contacts(others)
        ids = await rest.create_contacts([
            {"name": "Client 1", "custom_fields_values": [_phone("8 (912) 000-00-01")]},
            {"name": "Client 3", "custom_fields_values": [_email("CLIENT3@EXAMPLE.COM")]},
            {"name": "Client 5", "custom_fields_values": [_phone("+79120000005")]},
            {"name": "Client 5 again", "custom_fields_values": [_phone("9120000005")]},
        ])
    return {"cl1": ids[0], "cl3": ids[1]}


def _outcome(ledger_url: str) -> tuple[dict, dict]:
    engine = sa.create_engine(ledger_url)
    with engine.connect() as conn:
        contacts = dict(conn.execute(sa.text("SELECT client_key, contact_id FROM contacts")).all())
        quarantined = dict(conn.execute(sa.text("SELECT conversation_id, quarantine FROM chats "
                                                "WHERE quarantine IS NOT NULL")).all())
    engine.dispose()
    return contacts, quarantined


@pytest.mark.parametrize("way", ["search", "index"])
async def test_contacts_are_resolved_alike_by_search_and_by_index(emulator, tmp_path, monkeypatch, way):
    if way == "search":
        async def no_index(cls, api, pages_at_most):
            return None

        monkeypatch.setattr(ContactIndex, "read", classmethod(no_index))
    source, ledger_url = f"sqlite:///{tmp_path / 'source.db'}", f"sqlite:///{tmp_path / 'ledger.db'}"
    write_source(source, conversations=12, messages=2)
    existing = await _account(emulator)
    emulator.emulator.request_log.clear()
    result = await run_interval(settings_for(emulator, source, ledger_url))

    contacts, quarantined = _outcome(ledger_url)
    assert contacts["cl1"] == existing["cl1"] and contacts["cl3"] == existing["cl3"]
    assert "cl5" not in contacts and list(quarantined) == ["ae-cv5"] and "2 contacts match" in quarantined["ae-cv5"]
    assert len(contacts) == 11 and result.load.contacts_matched == 2 and result.load.contacts_created == 9
    answered = [entry for entry in emulator.emulator.request_log if entry[2] == "contacts" and entry[3] != 429]
    # By search: cl1 and cl5 by phone, cl3 by phone then email, cl7, cl9, cl11 both in vain (the six without phone
    # or email need none): 10. By index: the 304 contacts in 2 pages. Then one create, either way.
    assert len(answered) == (2 if way == "index" else 10) + 1


def test_the_index_matches_as_a_search_does():
    index = ContactIndex()
    for contact in ({"id": 1, "custom_fields_values": [_phone("+7 (915) 111-22-33")]},
                    {"id": 2, "custom_fields_values": [_email(" Anna@Example.com ")]},
                    {"id": 3, "custom_fields_values": [_phone("89151112233")]},
                    {"id": 4, "custom_fields_values": [{"field_code": "IM", "values": [{"value": "amojoetl0f"}]}]}):
        index.add(contact)
    assert index.matches("+79151112233", None) == [1, 3]  # one phone typed two ways: ambiguous
    assert index.matches(None, "anna@example.com") == [2]
    assert index.matches("+70000000000", "anna@example.com") == [2]  # phone first, then email
    assert index.matches(None, None) == [] and index.by_key("amojoetl0f") == [4]
