"""PostHog's official Python SDK (``posthog`` from PyPI) against the standalone server, end to end.

``run_plugin_server`` with CAPTURE_ENABLED serves capture and ingests in one
process; the SDK sends capture, identify, set, alias and a batch, and the
rows appear in Postgres with the right persons.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from posthog import Posthog

from plugin_server.models import Event, Person, PersonDistinctId, Team
from tests.capture.conftest import StandaloneServer
from tests.factories import create_team

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis, pytest.mark.slow]


def person_of(team: Team, distinct_id: str) -> Person:
    return PersonDistinctId.objects.get(team=team, distinct_id=distinct_id).person


def test_the_python_sdk_captures_identifies_aliases_and_batches(team: Team, standalone_server: StandaloneServer) -> None:
    """capture (anonymous), $identify merging the anonymous id, $set, alias and a gzipped batch of 25:
    every event stored for the team, one person holding all three distinct ids with the set properties."""
    single = Posthog(team.api_token, host=standalone_server.url, sync_mode=True, max_retries=0)
    single.capture("$pageview", distinct_id="anon-1", properties={"$current_url": "https://shop.test/"})
    single.capture("$identify", distinct_id="user-1", properties={"$anon_distinct_id": "anon-1", "$set": {"email": "max@hedgehog.test"}})
    single.set(distinct_id="user-1", properties={"plan": "pro"})
    single.alias(previous_id="user-1", distinct_id="user-1-login")
    single.shutdown()

    batched = Posthog(team.api_token, host=standalone_server.url, gzip=True, flush_at=100, flush_interval=60, max_retries=0)
    for n in range(25):
        batched.capture("purchase", distinct_id="user-1-login" if n % 5 == 0 else f"buyer-{n}", properties={"n": n})
    batched.flush()
    batched.shutdown()

    standalone_server.wait(lambda: Event.objects.filter(team=team).count() >= 29, 60, "29 stored events")
    assert Event.objects.filter(team=team).count() == 29
    names = dict(Event.objects.filter(team=team).values_list("event", "distinct_id").order_by("event").distinct())
    assert names["$identify"] == "user-1" and names["$create_alias"] == "user-1"
    assert sorted(Event.objects.filter(team=team, event="purchase").values_list("properties__n", flat=True)) == list(range(25))
    assert Event.objects.filter(team=team, event="purchase", properties__n=0).get().properties["$lib"] == "posthog-python"

    person = person_of(team, "user-1")
    assert person_of(team, "anon-1") == person == person_of(team, "user-1-login")
    assert set(PersonDistinctId.objects.filter(person=person).values_list("distinct_id", flat=True)) == {"anon-1", "user-1", "user-1-login"}
    assert person.properties["email"] == "max@hedgehog.test"
    assert person.properties["plan"] == "pro"
    assert person_of(team, "buyer-1") != person
    assert Person.objects.filter(team=team).count() == 1 + 20  # user-1's, and one per other buyer


def test_a_bad_key_is_refused_and_nothing_is_stored(team: Team, standalone_server: StandaloneServer) -> None:
    """The SDK with an unknown project key gets PostHog's 401; the events are not stored."""
    errors: list[object] = []
    client = Posthog("phc_not_a_project", host=standalone_server.url, max_retries=0, on_error=lambda error, batch: errors.append(error))
    client.capture("e", distinct_id="d")
    client.flush()
    client.shutdown()
    assert len(errors) == 1
    assert getattr(errors[0], "status", None) == 401
    assert "Project API key invalid" in str(errors[0])
    assert not Event.objects.exists()


def test_the_readme_quick_start_snippets_send_a_first_event(standalone_server: StandaloneServer) -> None:
    """The README's "Send a first event": its Python snippet, run as written (but for the port), and its
    curl body, each store an event for the demo team."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    snippet = re.search(r"bin/shell python - <<'EOF'\n(.*?)\nEOF\n", readme, re.S)
    curl = re.search(r"curl -d '(.*?)' http://127.0.0.1:3008/e/", readme)
    assert snippet is not None and curl is not None, "the README lost its first-event snippets"
    team = create_team(api_token="phc_demo_plugin_server_token")
    code = snippet.group(1).replace("http://127.0.0.1:3008", standalone_server.url)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    curl_headers = {"Content-Type": "application/x-www-form-urlencoded"}  # what curl -d says
    assert requests.post(standalone_server.url + "/e/", data=curl.group(1), headers=curl_headers, timeout=10).json() == {"status": 1}
    standalone_server.wait(lambda: Event.objects.filter(team=team).count() == 2, 60, "the two first events")
    assert Event.objects.get(team=team, event="first event").properties["plan"] == "free"
    assert Event.objects.get(team=team, event="hello").distinct_id == "curl"
