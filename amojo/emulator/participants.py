"""The people in chats: one record per amojo user, built from what requests said about them, and shown the same in
every message history answers (§3.3, §3.4)."""

from __future__ import annotations

from .config import EmulatorConfig
from .inputs import ApiError
from .store import Store, derived_id, digits


class Participants:
    """Resolves the participants a request names to their records, keeps the records, and renders them."""

    def __init__(self, config: EmulatorConfig, store: Store) -> None:
        self.config = config
        self.store = store

    @property
    def by_ref(self) -> bool:
        """Whether a participant may be given by `ref_id` alone (`ref_id_participants`, ⚠️)."""
        return self.config.ref_id_participants == "accept"

    def updated(self, record: dict, given: dict) -> dict:
        """`record` with what `given` says of the participant, as `participant_updates` (⚠️) has it."""
        profile = given.get("profile") or {}
        said = {"name": given.get("name"), "avatar": given.get("avatar"), "profile_link": given.get("profile_link"),
                "phone": profile.get("phone") or given.get("phone"),  # Q12: `profile`, or flat as AMO-REF has it
                "email": profile.get("email") or given.get("email")}
        out = dict(record)
        for key, value in said.items():
            if value is not None and (self.config.participant_updates == "merge" or out.get(key) in (None, "")):
                out[key] = value
        return out

    def client(self, scope_id: str, given: dict, where: str) -> dict:
        """The client a participant names: by `ref_id` (its amojo id), else by `id` (ours)."""
        ref_id = given.get("ref_id")
        if ref_id:
            known = self.store.participant(scope_id, ref_id)
            if known is not None and known["kind"] == "client":
                return self.updated(known, given)
        if given.get("id"):
            amojo_id = derived_id("user", scope_id, given["id"])
            known = self.store.participant(scope_id, amojo_id)
            return self.updated(known or {"amojo_id": amojo_id, "kind": "client", "client_id": given["id"]}, given)
        raise ApiError(400, f"{where}.id is required: {where}.ref_id {ref_id!r} is no client of this channel",
                       "PARTICIPANT_NOT_FOUND")

    def manager(self, scope_id: str, given: dict) -> dict:
        """The amoCRM side of an outgoing message: a user by its amojo_id, or the channel bot (§4.3)."""
        ref_id = given.get("ref_id")
        if not ref_id:
            raise ApiError(400, "outgoing message without sender.ref_id", "SENDER_REF_ID_REQUIRED", code=453)
        user = next((u for u in self.config.users if u.amojo_id == ref_id), None)
        if self.config.check_ref_id and user is None and ref_id != self.config.bot_id:
            raise ApiError(400, "sender.ref_id is neither a user's amojo_id nor the bot", "UNKNOWN_REF_ID")
        kind = "bot" if ref_id == self.config.bot_id else "user"
        record = self.updated(self.store.participant(scope_id, ref_id) or {"amojo_id": ref_id, "kind": kind}, given)
        if user is not None:
            record["name"] = user.name  # ⚠️ amoCRM shows its own user's name, whatever the message called them
        return record

    def remember(self, scope_id: str, record: dict) -> None:
        if self.store.participant(scope_id, record["amojo_id"]) != record:
            self.store.put_participant(scope_id, record["amojo_id"], record)

    @staticmethod
    def chat_user(given: dict, client: dict) -> dict:
        """The chat's client as stored with the chat: what was sent, with our id even when sent by ref_id."""
        return {**given, "id": client["client_id"], "name": given.get("name", client.get("name") or "")}

    @staticmethod
    def chat_client_id(chat: dict) -> str:
        return derived_id("user", chat["scope_id"], chat["user"].get("id") or "")

    def amojo_ids(self, scope_id: str, stored: dict) -> tuple[str, str | None]:
        """The amojo ids of a stored message's sender and receiver."""
        sender = stored.get("sender_amojo_id") or record_from_payload(scope_id, stored["sender"])["amojo_id"]
        receiver = stored.get("receiver_amojo_id")
        if receiver is None and stored["receiver"]:
            receiver = record_from_payload(scope_id, stored["receiver"])["amojo_id"]
        return sender, receiver

    def answer(self, scope_id: str, amojo_id: str | None, sent: dict, cache: dict[str, dict]) -> dict:
        """A participant as amojo answers, from its one record (the same in every message); `sent`, the payload
        stored with a message, only for messages stored before records were kept."""
        record = None
        if amojo_id:
            if amojo_id not in cache:
                cache[amojo_id] = self.store.participant(scope_id, amojo_id)  # type: ignore[assignment]
            record = cache[amojo_id]
        if record is None:
            record = record_from_payload(scope_id, sent)
        if record["kind"] != "client":
            return {"id": record["amojo_id"], "name": record.get("name") or ""}
        out = {"id": record["amojo_id"], "client_id": record.get("client_id"), "name": record.get("name") or "",
               "avatar": record.get("avatar") or ""}
        if record.get("phone") and digits(record["phone"]):
            out["phone"] = digits(record["phone"])
        if record.get("email"):
            out["email"] = record["email"]
        return out


def record_from_payload(scope_id: str, sent: dict) -> dict:
    """A participant record from a message payload stored before records were kept (an older state file)."""
    if sent.get("ref_id") and not sent.get("profile"):
        return {"amojo_id": sent["ref_id"], "kind": "user", "name": sent.get("name", "")}
    profile = sent.get("profile") or {}
    return {"amojo_id": derived_id("user", scope_id, sent.get("id", "")), "kind": "client",
            "client_id": sent.get("id"), "name": sent.get("name", ""), "avatar": sent.get("avatar", ""),
            "phone": profile.get("phone") or sent.get("phone"), "email": profile.get("email") or sent.get("email")}
