"""A consumer in another language, with another JSON Schema implementation: reads the event
topic with confluent-kafka, routes on the CloudEvents headers alone, and validates every
record against the schemas `GET /v1/schemas` serves, with the `jsonschema` package.

It then reads the task-state topic and validates each value against the served state schema.

Environment: BROKERS, TOPIC, EXPECTED (distinct events to read), STATE_TOPIC, EXPECTED_STATE
(distinct state records to read), SCHEMAS_URL, KEY, CE_SOURCE.
Prints one JSON summary line; exits 1 when anything failed.
"""

import base64
import copy
import json
import os
import sys
import time
import urllib.request

import jsonschema
from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING

failures = []


def fail(message):
    failures.append(message)


def fetch_schemas():
    request = urllib.request.Request(os.environ["SCHEMAS_URL"])
    token = base64.b64encode((os.environ["KEY"] + ":").encode()).decode()
    request.add_header("Authorization", "Basic " + token)
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


def validator(schema):
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def read_records(topic, expected, identity):
    consumer = Consumer(
        {
            "bootstrap.servers": os.environ["BROKERS"],
            "group.id": "validate-stream",
            "enable.auto.commit": False,
        }
    )
    partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    records, seen = [], set()
    deadline = time.monotonic() + 90
    while len(seen) < expected:
        if time.monotonic() > deadline:
            fail(f"only {len(seen)} of {expected} events arrived")
            break
        message = consumer.poll(1.0)
        if message is None:
            continue
        if message.error():
            fail(f"consumer error: {message.error()}")
            break
        headers = {k: (v or b"").decode() for k, v in (message.headers() or [])}
        value = json.loads(message.value())
        seen.add(identity(headers, value))
        records.append((message.key().decode(), headers, value))
    consumer.close()
    return records


def main():
    schemas = fetch_schemas()
    envelope = validator(schemas["envelope"])
    payloads = {
        (event_type, int(version)): validator(schema)
        for event_type, versions in schemas["events"].items()
        for version, schema in versions.items()
    }
    records = read_records(
        os.environ["TOPIC"], int(os.environ["EXPECTED"]), lambda h, v: v.get("event_id")
    )
    types = set()
    for key, headers, value in records:
        where = value.get("event_id")
        for error in envelope.iter_errors(value):
            fail(f"{where}: envelope: {error.message}")
        # Routing by header: the payload's schema is chosen without reading the body.
        ce_type = headers.get("ce_type", "")
        prefix = "ai.refonte.taskledger."
        if not ce_type.startswith(prefix) or ".v" not in ce_type:
            fail(f"{where}: ce_type {ce_type!r}")
            continue
        event_type, version = ce_type[len(prefix):].rsplit(".v", 1)
        types.add(event_type)
        schema = payloads.get((event_type, int(version)))
        if schema is None:
            fail(f"{where}: no schema for {ce_type}")
            continue
        for error in schema.iter_errors(value["payload"]):
            fail(f"{where}: {event_type} v{version} payload: {error.message}")
        wanted = {
            "ce_specversion": "1.0",
            "ce_id": value["event_id"],
            "ce_source": os.environ["CE_SOURCE"],
            # An event of no task names its account.
            "ce_subject": value["task_id"] or value["account_id"],
            "ce_time": value["recorded_at"],
            "ce_istest": "true" if value["is_test"] else "false",
            "content-type": "application/json",
        }
        for name, expected in wanted.items():
            if headers.get(name) != expected:
                fail(f"{where}: header {name} is {headers.get(name)!r}, not {expected!r}")
        if (event_type, int(version)) != (value["event_type"], value["event_version"]):
            fail(f"{where}: ce_type {ce_type} names another type than the envelope")
        if key != value["task_id"]:
            fail(f"{where}: key {key!r}")

    # The validator is not vacuous: broken copies of a real record are refused.
    if records:
        _, _, value = records[0]
        no_hash = copy.deepcopy(value)
        del no_hash["hash"]
        if envelope.is_valid(no_hash):
            fail("an envelope without its hash validated")
        created = next((v for _, _, v in records if v["event_type"] == "TaskCreated"), None)
        if created is not None:
            bad = copy.deepcopy(created["payload"])
            bad["task_type"] = 5
            if payloads[("TaskCreated", 1)].is_valid(bad):
                fail("a TaskCreated payload with a numeric task_type validated")

    state = validator(schemas["state"])
    states = read_records(
        os.environ["STATE_TOPIC"],
        int(os.environ["EXPECTED_STATE"]),
        lambda h, v: h.get("global-position"),
    )
    for key, headers, value in states:
        where = f"state at {headers.get('global-position')}"
        for error in state.iter_errors(value):
            fail(f"{where}: {error.message}")
        wanted = {
            "ce_specversion": "1.0",
            "ce_type": "ai.refonte.taskledger.TaskState.v1",
            "ce_source": os.environ["CE_SOURCE"],
            "ce_subject": key,
            "content-type": "application/json",
        }
        for name, expected in wanted.items():
            if headers.get(name) != expected:
                fail(f"{where}: header {name} is {headers.get(name)!r}, not {expected!r}")
        if key != value.get("task_id"):
            fail(f"{where}: key {key!r} is not the task's id")
    if states:
        _, _, value = states[-1]
        no_status = copy.deepcopy(value)
        del no_status["status"]
        if state.is_valid(no_status):
            fail("a task object without its status validated")

    print(
        json.dumps(
            {
                "records": len(records),
                "state_records": len(states),
                "event_types": sorted(types),
                "failures": failures[:50],
            }
        )
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
