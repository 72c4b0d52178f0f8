"""`mailcare assign | close | reopen | scope N …`: admin commands applied to the store.

They go through the same planning code as an agent's `#assign`/`#close` mail, so the rules
(and the mail the new owner receives) are the same whichever door a change comes through.
"""

from __future__ import annotations

from . import pipeline
from . import plan as plan_mod
from .config import Settings
from .store import Store


def apply_admin(settings: Settings, number: int, action: str, arg: str, *, now: float) -> str:
    store = Store(pipeline.state_db(settings), create=False)
    try:
        row = store.case(number)
        if row is None:
            return f"no case {number}"
        engine = pipeline.Engine.load(settings, train=False)
        env = plan_mod.Env(
            settings=settings,
            secret=engine.secret,
            templates=engine.templates,
            hours=engine.hours,
            now=now,
        )
        row["first_text"] = store.first_customer_text(number)
        facts = plan_mod.Facts(
            duplicate=False,
            next_case_number=0,
            case_row=row,
            customer_ids=store.customer_message_ids(number),
            open_counts={},
            last_assigned=None,
            previous_owner=None,
            sent_to_sender=(),
            sent_for_case=(),
            suppressed_until=None,
            last_take=None,
        )
        plan, lines = plan_mod.admin_command(row, action, arg, facts, env)
        with store.batch():
            store.apply(plan, now=now)
        pipeline.record_corrections(engine, plan)
        queued = len(plan.outgoing)
        tail = f" ({queued} mail queued; the running daemon sends it)" if queued else ""
        return f"case {number}: " + "; ".join(lines or ["nothing to do"]) + tail
    finally:
        store.close()
