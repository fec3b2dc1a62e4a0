"""Listing by owner: ``?owner=`` keeps one CacheLink's instances, ``/v1/owners`` and the node's
``listen_ports`` say who holds what without asking every engine (what the operator reads at scale)."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from .conftest import PROMPT_IP


@pytest.fixture
def agent(agents):
    made = agents("node-o", PROMPT_IP, "--in-process")
    made.put_instance("a-one", 1, owner="uid-a")
    made.put_instance("a-two", 2, owner="uid-a")
    made.put_instance("b-one", 3, owner="uid-b")
    return made


def _names(agent, query: list[tuple[str, str]]) -> list[str]:
    status, body = agent.http("GET", "/v1/instances" + (f"?{urlencode(query)}" if query else ""))
    assert status == 200, body
    return [inst["name"] for inst in body["instances"]]


def test_instances_are_listed_by_owner(agent) -> None:
    assert _names(agent, [("owner", "uid-a")]) == ["a-one", "a-two"]
    assert _names(agent, [("owner", "uid-b"), ("owner", "uid-a")]) == ["a-one", "a-two", "b-one"]
    assert _names(agent, [("owner", "uid-nobody")]) == []
    assert _names(agent, []) == ["a-one", "a-two", "b-one"]
    assert [i.name for i in agent.call(lambda c: c.get_instances(owner="uid-b"))] == ["b-one"]


def test_owners_and_listen_ports_follow_the_instances(agent) -> None:
    assert agent.call(lambda c: c.get_owners()) == {"uid-a": ["a-one", "a-two"], "uid-b": ["b-one"]}
    ports = {name: int(agent.instance(name).listen_address.rpartition(":")[2]) for name in ("a-one", "b-one")}
    held = agent.call(lambda c: c.get_node()).listen_ports
    assert [p.port for p in held] == sorted(p.port for p in held)
    by_instance = {p.instance: (p.port, p.owner) for p in held}
    assert by_instance["a-one"] == (ports["a-one"], "uid-a")
    assert by_instance["b-one"] == (ports["b-one"], "uid-b")
    assert set(by_instance) == {"a-one", "a-two", "b-one"}

    agent.call(lambda c: c.delete_instance("a-one"))
    assert agent.call(lambda c: c.get_owners()) == {"uid-a": ["a-two"], "uid-b": ["b-one"]}
    assert "a-one" not in {p.instance for p in agent.call(lambda c: c.get_node()).listen_ports}
    assert _names(agent, [("owner", "uid-a")]) == ["a-two"]


@pytest.mark.parametrize("owner", ["", "x" * 129])
def test_a_bad_owner_query_is_a_422_naming_it(agent, owner: str) -> None:
    status, body = agent.http("GET", f"/v1/instances?{urlencode([('owner', owner)])}")
    assert status == 422
    assert body["error"] == "validation_error" and body["fields"][0]["loc"] == "query.owner"


def test_an_unknown_query_parameter_is_a_422_not_a_wider_listing(agent) -> None:
    status, body = agent.http("GET", "/v1/instances?ower=uid-a")
    assert status == 422
    assert body["fields"][0]["loc"] == "query.ower" and "owner" in body["message"]
