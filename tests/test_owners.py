"""Owner choice: availability, policies, relaxation, stickiness."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

import pytest

from mailcare import owners
from mailcare.config import AgentSection, OwnersSection
from mailcare.owners import Choice

TODAY = date(2026, 11, 24)


def agent(name: str, **fields: Any) -> AgentSection:
    return AgentSection(name=name, address=f"{name}@examplenet.it", **fields)


TEAM = (
    agent("anna", queues=("billing",), languages=("it",)),
    agent("bruno", queues=("billing", "network"), languages=("it", "en")),
    agent("carla", queues=("network",), languages=("en",)),
    agent("dario"),
)


def pick(
    agents: Sequence[AgentSection] = TEAM,
    *,
    policy: str = "round_robin",
    queue: str = "billing",
    language: str = "it",
    open_counts: Mapping[str, int] | None = None,
    last_assigned: str | None = None,
    previous_owner: str | None = None,
) -> Choice:
    return owners.choose(
        agents,
        policy=policy,
        queue=queue,
        language=language,
        open_counts=open_counts or {},
        last_assigned=last_assigned,
        previous_owner=previous_owner,
        today=TODAY,
    )


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, True),
        ({"away": True}, False),
        ({"away_from": date(2026, 11, 24), "away_until": date(2026, 11, 30)}, False),
        ({"away_from": date(2026, 11, 20), "away_until": date(2026, 11, 24)}, False),
        ({"away_from": date(2026, 11, 25), "away_until": date(2026, 11, 30)}, True),
        ({"away_from": date(2026, 11, 1), "away_until": date(2026, 11, 23)}, True),
        ({"away_from": date(2026, 11, 1)}, False),
        ({"away_from": date(2026, 12, 1)}, True),
        ({"away_until": date(2026, 11, 24)}, False),
        ({"away_until": date(2026, 11, 23)}, True),
    ],
)
def test_available_window_is_inclusive(fields: dict[str, Any], expected: bool) -> None:
    assert owners.available(agent("x", **fields), TODAY) is expected


def test_round_robin_follows_config_order_among_eligible() -> None:
    assert pick(last_assigned=None) == Choice("anna@examplenet.it", "round_robin")
    assert pick(last_assigned="anna@examplenet.it").agent == "bruno@examplenet.it"
    # carla serves neither billing nor Italian; dario (no queues, no languages) serves all.
    assert pick(last_assigned="bruno@examplenet.it").agent == "dario@examplenet.it"
    assert pick(last_assigned="carla@examplenet.it").agent == "dario@examplenet.it"
    assert pick(last_assigned="dario@examplenet.it").agent == "anna@examplenet.it"


def test_round_robin_with_unknown_last_starts_at_the_top() -> None:
    assert pick(last_assigned="gone@examplenet.it").agent == "anna@examplenet.it"


def test_round_robin_last_assigned_is_case_insensitive() -> None:
    assert pick(last_assigned="Anna@ExampleNet.it").agent == "bruno@examplenet.it"


def test_empty_queues_and_languages_serve_everything() -> None:
    choice = pick(queue="returns", language="fr")
    assert choice == Choice("dario@examplenet.it", "round_robin")


def test_least_open_ties_break_by_config_order() -> None:
    counts = {"anna@examplenet.it": 2, "bruno@examplenet.it": 2, "dario@examplenet.it": 4}
    assert pick(policy="least_open", open_counts=counts) == Choice(
        "anna@examplenet.it", "least_open (2 open)"
    )
    counts["anna@examplenet.it"] = 3
    assert pick(policy="least_open", open_counts=counts) == Choice(
        "bruno@examplenet.it", "least_open (2 open)"
    )


def test_relax_language_before_queue() -> None:
    specialists = TEAM[:3]
    choice = pick(specialists, queue="network", language="de")
    assert choice == Choice("bruno@examplenet.it", "round_robin (language relaxed)")
    team = (
        agent("anna", queues=("billing",)),
        agent("carla", queues=("network",), languages=("en",)),
    )
    relaxed = pick(team, queue="network", language="it")
    assert relaxed == Choice("carla@examplenet.it", "round_robin (language relaxed)")


def test_relax_queue_last() -> None:
    team = (
        agent("anna", queues=("billing",), languages=("it",)),
        agent("carla", queues=("network",)),
    )
    choice = pick(team, queue="sales", language="it")
    assert choice == Choice("anna@examplenet.it", "round_robin (queue and language relaxed)")


def test_relaxation_never_picks_away_agents() -> None:
    team = (agent("anna", queues=("billing",), away=True), agent("carla", queues=("network",)))
    assert pick(team, queue="billing").agent == "carla@examplenet.it"


def test_max_open_is_respected() -> None:
    team = (agent("anna", max_open=2), agent("bruno", max_open=5))
    counts = {"anna@examplenet.it": 2, "bruno@examplenet.it": 4}
    assert pick(team, open_counts=counts).agent == "bruno@examplenet.it"
    counts["bruno@examplenet.it"] = 5
    assert pick(team, open_counts=counts) == Choice(None, "no agent available: all at max_open")


def test_all_away() -> None:
    team = (agent("anna", away=True), agent("bruno", away_until=date(2026, 12, 1)))
    assert pick(team) == Choice(None, "no agent available: all away")


def test_no_agents_configured() -> None:
    assert pick(()) == Choice(None, "no agent available: none configured")


def test_previous_owner_wins_even_outside_queue_and_language() -> None:
    choice = pick(previous_owner="Carla@examplenet.it", last_assigned="anna@examplenet.it")
    assert choice == Choice("carla@examplenet.it", "sticky: previous owner")


def test_previous_owner_away_or_full_falls_back_to_policy() -> None:
    team = (agent("anna"), agent("bruno", away=True), agent("carla", max_open=1))
    away = pick(team, previous_owner="bruno@examplenet.it")
    assert away == Choice("anna@examplenet.it", "round_robin")
    full = pick(team, previous_owner="carla@examplenet.it", open_counts={"carla@examplenet.it": 1})
    assert full.agent == "anna@examplenet.it"


def test_previous_owner_no_longer_configured_is_ignored() -> None:
    assert pick(previous_owner="left@examplenet.it").reason == "round_robin"


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown owner policy"):
        pick(policy="random")


def test_default_owner_settings() -> None:
    """Defaults: round robin, 30 sticky days (applied by the caller), hold other-agent replies."""
    section = OwnersSection()
    assert (section.policy, section.sticky_days, section.other_agent_reply) == (
        "round_robin",
        30,
        "hold",
    )
    assert section.policy in owners.POLICIES
