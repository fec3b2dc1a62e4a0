"""Kubernetes timestamps are UTC whatever the machine's time zone (daylight saving included)."""

from __future__ import annotations

import datetime
import os
import time

import pytest
from cachelink_operator import timestamps


@pytest.fixture
def zone():
    saved = os.environ.get("TZ")

    def set_zone(name: str) -> None:
        os.environ["TZ"] = name
        time.tzset()

    yield set_zone
    if saved is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = saved
    time.tzset()


@pytest.mark.parametrize("name", ["UTC", "Europe/Berlin", "America/New_York", "Australia/Sydney"])
def test_age_is_exact_in_every_zone_and_season(zone, name):
    zone(name)
    for month in (1, 7):  # winter and summer on either hemisphere
        now = datetime.datetime(2026, month, 15, 12, 0, 0, tzinfo=datetime.UTC)
        ten_ago = (now - datetime.timedelta(seconds=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert timestamps.age_seconds(ten_ago, now) == 10.0
        assert timestamps.epoch_seconds(ten_ago) == now.timestamp() - 10


def test_fractions_and_offsets():
    assert timestamps.epoch_seconds("1970-01-01T00:00:01.5Z") == 1.5
    assert timestamps.epoch_seconds("1970-01-01T01:00:00+01:00") == 0.0


def test_a_timestamp_without_zone_is_refused():
    with pytest.raises(ValueError, match="no time zone"):
        timestamps.parse("2026-07-01T12:00:00")


@pytest.mark.parametrize("name", ["Europe/Berlin", "Australia/Sydney"])  # one of them is always in DST
def test_time_to_linked_metric_is_not_off_by_the_dst_hour(zone, name):
    from types import SimpleNamespace

    from cachelink_operator import reconcile
    from prometheus_client import REGISTRY

    zone(name)
    metric = "cachelink_operator_time_to_linked_seconds_sum"
    before = REGISTRY.get_sample_value(metric) or 0.0
    created = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=30)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    runtime = SimpleNamespace(linked_once=set())
    reconcile._observe_metrics(
        runtime, {"uid": f"u-{name}", "creationTimestamp": created}, SimpleNamespace(phase="Ready")
    )
    observed = (REGISTRY.get_sample_value(metric) or 0.0) - before
    assert 29 <= observed <= 90
