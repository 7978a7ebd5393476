"""The Kafka source's own behaviour on the real broker: losing partitions, crash counts, settings (spec: ingestion.md §1.2)."""

from __future__ import annotations

import base64
import threading
import time

import pytest
import redis
from django.core.exceptions import ImproperlyConfigured

from plugin_server.events import Delivery
from plugin_server.exceptions import RetriableError
from plugin_server.ingestion.sources.attempts import AttemptCounter
from plugin_server.ingestion.sources.kafka import KafkaSource
from plugin_server.kafka_client import client_id, client_settings, consumer_settings
from plugin_server.metrics import RecordingMetrics
from tests.kafka_helpers import capture_message, create_topic, produce, take

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


@pytest.fixture
def topic(kafka_bootstrap: str, unique_name: str, settings) -> str:  # type: ignore[no-untyped-def]
    settings.KAFKA_HOSTS = kafka_bootstrap
    create_topic(kafka_bootstrap, unique_name, 2)
    return unique_name


def rebalance(first: KafkaSource, second: KafkaSource, seconds: float = 30.0) -> list[Delivery]:
    """Poll both until each owns one of the two partitions; what the second took meanwhile."""
    second.start()
    taken: list[Delivery] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (len(first.assigned) == 1 and len(second.assigned) == 1):
        first.poll(10, timeout=0.2)  # the first meets the rebalance here (and waits for its batch in hand)
        taken.extend(second.poll(10, timeout=0.2))
    assert len(first.assigned) == 1 and len(second.assigned) == 1
    return taken


def people(source: KafkaSource, deliveries: list[Delivery]) -> list[str]:
    return [source.decode(delivery, 10**6)["distinct_id"] for delivery in deliveries]


def test_a_person_s_events_come_in_order_from_one_partition(kafka_bootstrap: str, topic: str) -> None:
    """Messages keyed <team>:<distinct id>: each person's events keep their order whatever the partition."""
    messages = [capture_message(2, f"user-{index % 20}", properties={"n": index}) for index in range(60)]
    produce(kafka_bootstrap, topic, messages)
    source = KafkaSource(topic, group=topic)
    try:
        taken = take(source, 60)
        by_person: dict[str, list[int]] = {}
        partitions: dict[str, set[int]] = {}
        for delivery in taken:
            event = source.decode(delivery, 10**6)
            by_person.setdefault(event["distinct_id"], []).append(event["properties"]["n"])
            partitions.setdefault(event["distinct_id"], set()).add(delivery.token[0])
        assert all(numbers == sorted(numbers) for numbers in by_person.values())
        assert all(len(indexes) == 1 for indexes in partitions.values())
        assert len({index for indexes in partitions.values() for index in indexes}) == 2  # both partitions used
    finally:
        source.close()


def a_batch_in_hand(bootstrap: str, topic: str, revoke_wait: float) -> tuple[KafkaSource, KafkaSource, list[Delivery]]:
    """20 messages over both partitions taken by a first server; a second server of the group, not started."""
    produce(bootstrap, topic, [capture_message(2, f"u{index}") for index in range(20)])
    first = KafkaSource(topic, group=topic, revoke_wait=revoke_wait)
    batch = take(first, 20)
    assert len(batch) == 20
    return first, KafkaSource(topic, group=topic), batch


def test_losing_partitions_waits_for_the_batch_in_hand_and_commits_it(
    kafka_bootstrap: str, topic: str, recording_metrics: RecordingMetrics
) -> None:
    """A second server joins while the first stores a batch: the batch finishes, is committed, is not processed twice."""
    first, second, batch = a_batch_in_hand(kafka_bootstrap, topic, revoke_wait=20.0)
    try:
        # The batch is being stored on the loop's other thread: acknowledged in 1.5 s.
        storing = threading.Timer(1.5, first.ack, [batch])
        storing.start()
        seen_by_second = rebalance(first, second)
        storing.join()
        seen_by_second.extend(second.poll(10, timeout=2.0))
        assert seen_by_second == []  # nothing of the finished batch comes again
        assert recording_metrics.total("kafka_queue.partitions_revoked") >= 1
        assert recording_metrics.total("kafka_queue.stale_deliveries") == 0
    finally:
        first.close()
        second.close()


def test_a_batch_not_finished_in_time_goes_to_the_new_owner_and_its_late_ack_is_not_committed(
    kafka_bootstrap: str, topic: str, recording_metrics: RecordingMetrics
) -> None:
    first, second, batch = a_batch_in_hand(kafka_bootstrap, topic, revoke_wait=0.5)
    try:
        again = rebalance(first, second)
        first.ack(batch)  # too late: its lost partition's messages belong to the second server now
        again.extend(take(second, 20 - len(again) - len([d for d in batch if d.token[0] in first.assigned]), timeout=10))
        lost = [delivery for delivery in batch if delivery.token[0] not in first.assigned]
        assert sorted(people(second, again)) == sorted(people(first, lost))
        # With the eager protocol every partition is revoked first, so the late ack of messages of
        # the partition that came back is not committed either: they come to the first server again.
        assert recording_metrics.total("kafka_queue.stale_deliveries") >= len(lost) > 0
    finally:
        first.close()
        second.close()


def test_a_message_in_hand_when_its_consumer_died_comes_back_counted_and_alone(kafka_bootstrap: str, topic: str) -> None:
    """The poison-pill contract: a crash counts what was in hand; each suspect is handed out alone.
    A message acknowledged before the crash (its commit lost with the process) comes back as a first attempt."""
    produce(kafka_bootstrap, topic, [capture_message(2, "same-person", properties={"n": index}) for index in range(4)])
    dying = KafkaSource(topic, group=topic, revoke_wait=0.1, commit_interval=3600)
    taken = take(dying, 4)
    assert [delivery.attempts for delivery in taken] == [1, 1, 1, 1]
    dying.ack(taken[:1])  # stored, but the commit had not happened yet
    # The process dies: the commit is lost, the consumer leaves the group, nothing is given back.
    dying._acked.clear()
    assert dying._consumer is not None
    dying._consumer.close()
    survivor = KafkaSource(topic, group=topic)
    try:
        batches: list[list[Delivery]] = []
        deadline = time.monotonic() + 20
        while sum(len(batch) for batch in batches) < 4 and time.monotonic() < deadline:
            batch = survivor.poll(10, timeout=0.5)  # one poll, one batch
            if batch:
                batches.append(batch)
                survivor.ack(batch)
        numbers = [[survivor.decode(d, 10**6)["properties"]["n"] for d in batch] for batch in batches]
        attempts = [[d.attempts for d in batch] for batch in batches]
        assert numbers == [[0], [1], [2], [3]]
        assert attempts == [[1], [2], [2], [2]]
    finally:
        survivor.close()


def test_many_suspects_come_one_by_one_from_what_was_polled_then_the_rest_together(kafka_bootstrap: str, topic: str) -> None:
    """After a crash with 30 messages in hand, the 30 suspects are handed out alone, in order, each as soon as
    asked (held back from the poll that fetched them, not fetched again), and the 10 after them as first
    attempts; while Redis cannot count them, nothing polled is skipped."""
    produce(kafka_bootstrap, topic, [capture_message(2, "same-person", properties={"n": index}) for index in range(40)])
    dying = KafkaSource(topic, group=topic, revoke_wait=0.1, commit_interval=3600)
    assert len(take(dying, 30)) == 30
    assert dying._consumer is not None
    dying._consumer.close()  # dies holding all 30: nothing acknowledged, nothing given back
    survivor = KafkaSource(topic, group=topic)
    try:
        first = take(survivor, 1)
        assert [delivery.attempts for delivery in first] == [2]
        # Redis goes away while the held messages are counted: the poll fails, and skips nothing.
        counter = survivor._attempts
        survivor._attempts = AttemptCounter(topic, client=redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2))
        with pytest.raises((redis.RedisError, RetriableError)):
            survivor.poll(10, timeout=0)
        survivor._attempts = counter
        batches = [first]
        survivor.ack(first)
        deadline = time.monotonic() + 20
        while sum(len(batch) for batch in batches) < 40 and time.monotonic() < deadline:
            batch = survivor.poll(50, timeout=0.5)
            if batch:
                batches.append(batch)
                survivor.ack(batch)
        numbers = [survivor.decode(d, 10**6)["properties"]["n"] for batch in batches for d in batch]
        assert numbers == list(range(40))
        assert [len(batch) for batch in batches[:30]] == [1] * 30
        assert {d.attempts for batch in batches[:30] for d in batch} == {2}
        assert {d.attempts for batch in batches[30:] for d in batch} == {1}
    finally:
        survivor.close()


def test_kafka_hosts_client_id_and_tls_only_with_all_three_certificates(settings) -> None:  # type: ignore[no-untyped-def]
    settings.KAFKA_HOSTS = ""
    with pytest.raises(ImproperlyConfigured, match="^You must set KAFKA_HOSTS to process events from Kafka!$"):
        client_settings()
    settings.KAFKA_HOSTS = "k1:9092,k2:9092"
    plain = consumer_settings()
    assert plain["bootstrap.servers"] == "k1:9092,k2:9092"
    assert plain["group.id"] == "clickhouse-ingestion"
    assert plain["isolation.level"] == "read_committed"
    assert plain["max.poll.interval.ms"] == 60_000  # KAFKA_REBALANCE_TIMEOUT_MS
    assert plain["client.id"] == client_id() and client_id().startswith("plugin-server-v")
    assert "security.protocol" not in plain
    pem = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n").decode()
    settings.KAFKA_CLIENT_CERT_B64 = pem
    settings.KAFKA_CLIENT_CERT_KEY_B64 = pem
    assert "security.protocol" not in client_settings()  # two of three: no TLS
    settings.KAFKA_TRUSTED_CERT_B64 = pem
    tls = client_settings()
    assert tls["security.protocol"] == "ssl"
    assert tls["ssl.ca.pem"] == "-----BEGIN CERTIFICATE-----\n"
    assert tls["ssl.endpoint.identification.algorithm"] == "none"


@pytest.mark.django_db(transaction=True)
def test_the_server_refuses_to_start_without_kafka_hosts() -> None:
    """KAFKA_ENABLED with an empty KAFKA_HOSTS: the original's message, exit status 1."""
    from tests.manage_process import run_manage

    finished = run_manage("run_plugin_server", KAFKA_ENABLED="true", KAFKA_HOSTS="", DISABLE_WEB="true", timeout=120)
    assert finished.returncode == 1
    assert "You must set KAFKA_HOSTS to process events from Kafka!" in finished.stdout + finished.stderr
