"""Alerts: Prefect automations that notify a person when a night goes wrong.

Two automations on the Prefect server, through a notification block the user made (Slack, email, a webhook):
an import that failed or ended incomplete (its state is Failed, named Incomplete: flows/outcome.py), and a nightly
import that did not finish at all within 26 hours. Installing again replaces them, so it is safe to repeat.
"""

from __future__ import annotations

from datetime import timedelta

from .errors import ConfigurationError

FAILED_OR_INCOMPLETE = "amojo-etl: import failed or incomplete"
NIGHT_MISSED = "amojo-etl: no nightly import in 26 hours"
IMPORT_FLOW = "import-chats"
NIGHTLY_DEPLOYMENT = "nightly-import"


async def install_alerts(notify_block: str) -> list[str]:
    """Create (or replace) the automations, notifying through the notification block named `notify_block`
    (`slack-webhook/night-watch`, or a bare name when only one block has it). Returns their names."""
    from prefect.automations import Automation
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    block_id = await _block_id(notify_block)
    failed = Automation(
        name=FAILED_OR_INCOMPLETE,
        description="An import-chats run ended Failed (incomplete runs are Failed, named Incomplete) or Crashed.",
        trigger=EventTrigger(
            # An event is named after the state's name: an incomplete run's is prefect.flow-run.Incomplete.
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Incomplete", "prefect.flow-run.Crashed"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": IMPORT_FLOW},
            posture=Posture.Reactive, threshold=1, within=timedelta(0)),
        actions=[SendNotification(
            block_document_id=block_id,
            subject="amojo-etl: {{ flow_run.name }} is {{ flow_run.state.name }}",
            body="{{ flow_run.name }}: {{ flow_run.state.name }}. {{ flow_run.state.message }}\n"
                 "Next: run it again (amojo-etl backfill --reprocess failed), or amojo-etl reconcile --repair for "
                 "what amoCRM lost; amojo-etl status shows the days.")],
    )
    missed = Automation(
        name=NIGHT_MISSED,
        description="No run of the nightly-import deployment finished (Completed or Failed) in 26 hours.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Completed", "prefect.flow-run.Failed", "prefect.flow-run.Incomplete",
                    "prefect.flow-run.Crashed"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "deployment", "prefect.resource.name": NIGHTLY_DEPLOYMENT},
            posture=Posture.Proactive, threshold=1, within=timedelta(hours=26)),
        actions=[SendNotification(
            block_document_id=block_id, subject="amojo-etl: no nightly import in 26 hours",
            body="No run of import-chats/nightly-import finished in the last 26 hours: is a worker polling the "
                 "work pool, and is the deployment's schedule active?")],
    )
    names = []
    for automation in (failed, missed):
        await _delete_named(automation.name)
        await automation.acreate()
        names.append(automation.name)
    return names


async def _block_id(name: str):
    """The id of the notification block named `name` (`type-slug/name`, or a bare name)."""
    from prefect.client.orchestration import get_client

    slug, _, block_name = name.rpartition("/")
    async with get_client() as client:
        documents = await client.read_block_documents()
    found = [d for d in documents if d.name == block_name and (not slug or d.block_type.slug == slug)]
    if len(found) != 1:
        kinds = ", ".join(sorted({f"{d.block_type.slug}/{d.name}" for d in documents})) or "none"
        raise ConfigurationError(
            f"--notify {name}: {'no' if not found else 'more than one'} block of that name on the Prefect server "
            f"(blocks there: {kinds}); make one in the UI (Blocks → Slack Webhook, Email, Custom Webhook…) and "
            "name it here as type/name")
    return found[0].id


async def _delete_named(name: str) -> None:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        for automation in await client.read_automations_by_name(name):
            await client.delete_automation(automation.id)
