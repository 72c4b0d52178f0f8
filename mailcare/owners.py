"""Who owns a new case: one agent, chosen by a rule anyone can replay by hand.

The choice is a pure function of the configuration and a few counters, so the reason
recorded on the case ("round_robin (language relaxed)") is enough to explain it later.
Ties always break by the order agents are listed in `mailcare.toml`, never by chance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from mailcare.config import AgentSection


@dataclass(frozen=True)
class Choice:
    """The chosen agent's address (None when nobody can take the case) and why."""

    agent: str | None
    reason: str


def available(agent: AgentSection, today: date) -> bool:
    """Not flagged away and not inside the away window (both ends inclusive).

    A window with only `away_from` is open-ended (left the company, long leave); one with
    only `away_until` means "away until then".
    """
    if agent.away:
        return False
    if agent.away_from is None and agent.away_until is None:
        return True
    starts_before = agent.away_from is None or agent.away_from <= today
    ends_after = agent.away_until is None or today <= agent.away_until
    return not (starts_before and ends_after)


def _has_room(agent: AgentSection, open_counts: Mapping[str, int]) -> bool:
    return agent.max_open is None or open_counts.get(agent.address, 0) < agent.max_open


def _serves_queue(agent: AgentSection, queue: str) -> bool:
    """An agent without queues serves all; a case without a queue (unsure) suits anyone."""
    return not queue or not agent.queues or queue in agent.queues


def _speaks(agent: AgentSection, language: str) -> bool:
    return not agent.languages or language in agent.languages


def _tiers(
    candidates: Sequence[AgentSection], queue: str, language: str
) -> list[tuple[str, list[AgentSection]]]:
    """Candidate lists from strictest to loosest: language is given up before queue."""
    return [
        ("", [a for a in candidates if _serves_queue(a, queue) and _speaks(a, language)]),
        (" (language relaxed)", [a for a in candidates if _serves_queue(a, queue)]),
        (" (queue and language relaxed)", list(candidates)),
    ]


def _round_robin(
    agents: Sequence[AgentSection],
    eligible: Sequence[AgentSection],
    open_counts: Mapping[str, int],
    last_assigned: str | None,
) -> tuple[AgentSection, str]:
    """The next eligible agent after the last one assigned, in config order, wrapping."""
    order = [a.address for a in agents]
    last = last_assigned.lower() if last_assigned else None
    start = order.index(last) + 1 if last in order else 0
    names = {a.address for a in eligible}
    for step in range(len(order)):
        address = order[(start + step) % len(order)]
        if address in names:
            return next(a for a in eligible if a.address == address), "round_robin"
    return eligible[0], "round_robin"


def _least_open(
    agents: Sequence[AgentSection],
    eligible: Sequence[AgentSection],
    open_counts: Mapping[str, int],
    last_assigned: str | None,
) -> tuple[AgentSection, str]:
    """Fewest open cases; `eligible` keeps config order and min() keeps the first tie."""
    best = min(eligible, key=lambda a: open_counts.get(a.address, 0))
    return best, f"least_open ({open_counts.get(best.address, 0)} open)"


Policy = Callable[
    [Sequence[AgentSection], Sequence[AgentSection], Mapping[str, int], str | None],
    tuple[AgentSection, str],
]
POLICIES: dict[str, Policy] = {"round_robin": _round_robin, "least_open": _least_open}


def _nobody(agents: Sequence[AgentSection], present: Sequence[AgentSection]) -> Choice:
    if not agents:
        return Choice(None, "no agent available: none configured")
    if not present:
        return Choice(None, "no agent available: all away")
    return Choice(None, "no agent available: all at max_open")


def choose(
    agents: Sequence[AgentSection],
    *,
    policy: str,
    queue: str,
    language: str,
    open_counts: Mapping[str, int],
    last_assigned: str | None,
    previous_owner: str | None,
    today: date,
) -> Choice:
    """Pick the owner of a new case.

    Away agents and agents at `max_open` are never picked. The previous owner of this
    customer (the caller has already applied `sticky_days`) wins whenever they could take
    the case at all, because a customer should keep talking to the person who knows them.
    Otherwise `policy` picks among the agents serving the queue and language, relaxing
    language first and then queue: an answer in a second language beats no answer.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown owner policy {policy!r}; expected one of {sorted(POLICIES)}")
    present = [a for a in agents if available(a, today)]
    candidates = [a for a in present if _has_room(a, open_counts)]
    if not candidates:
        return _nobody(agents, present)
    previous = previous_owner.lower() if previous_owner else None
    if any(a.address == previous for a in candidates):
        return Choice(previous, "sticky: previous owner")
    for note, eligible in _tiers(candidates, queue, language):
        if eligible:
            agent, reason = POLICIES[policy](agents, eligible, open_counts, last_assigned)
            return Choice(agent.address, reason + note)
    return _nobody(agents, present)  # unreachable: the loosest tier is every candidate
