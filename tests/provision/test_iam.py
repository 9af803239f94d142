"""The IAM output: each identity gets roles on its own resources only, as gcloud commands."""

from __future__ import annotations

import subprocess
from pathlib import Path

from relay.provision import SERVICE_AGENT, Binding, gcloud_script, iam_bindings
from relay.topology import load_topology

REPO = Path(__file__).resolve().parents[2]


def test_bindings_of_the_repository_topology_are_least_privilege() -> None:
    topology = load_topology(REPO / "relay.yaml")
    airflow = "serviceAccount:relay-airflow@relay-local.iam.gserviceaccount.com"
    functions = "serviceAccount:relay-functions@relay-local.iam.gserviceaccount.com"
    push = "serviceAccount:relay-push@relay-local.iam.gserviceaccount.com"

    bindings = {(b.kind, b.resource, b.role, b.member) for b in iam_bindings(topology)}

    assert bindings == {
        ("topic", "relay-echo-requests", "roles/pubsub.publisher", airflow),
        ("topic", "relay-csv-profile-requests", "roles/pubsub.publisher", airflow),
        ("topic", "relay-results", "roles/pubsub.subscriber", airflow),
        ("project", "relay-local", "projects/relay-local/roles/relayWaiter", airflow),
        ("topic", "relay-results", "roles/pubsub.publisher", functions),
        ("function", "echo", "roles/run.invoker", push),
        ("function", "csv-profile", "roles/run.invoker", push),
        ("function", "dead-letter", "roles/run.invoker", push),
        ("topic", "relay-dead-letter", "roles/pubsub.publisher", SERVICE_AGENT),
        ("subscription", "echo-push", "roles/pubsub.subscriber", SERVICE_AGENT),
        ("subscription", "csv-profile-push", "roles/pubsub.subscriber", SERVICE_AGENT),
        # The dead-letter function's own subscription dead-letters to the terminal topic.
        ("topic", "relay-undeliverable", "roles/pubsub.publisher", SERVICE_AGENT),
        ("subscription", "dead-letter-push", "roles/pubsub.subscriber", SERVICE_AGENT),
        (
            "service_account",
            "relay-push@relay-local.iam.gserviceaccount.com",
            "roles/iam.serviceAccountTokenCreator",
            SERVICE_AGENT,
        ),
    }
    # No identity gets a project-wide Pub/Sub role.
    assert not any(
        role.startswith("roles/pubsub") for kind, _, role, _ in bindings if kind == "project"
    )


def test_shared_dead_letter_topic_is_granted_once_with_both_reasons() -> None:
    topology = load_topology(REPO / "relay.yaml")

    grants = [
        b
        for b in iam_bindings(topology)
        if b.kind == "topic" and b.resource == "relay-dead-letter" and b.member == SERVICE_AGENT
    ]

    assert grants == [
        Binding(
            "topic",
            "relay-dead-letter",
            "roles/pubsub.publisher",
            SERVICE_AGENT,
            "Pub/Sub forwards echo's undeliverable messages to relay-dead-letter; "
            "Pub/Sub forwards csv-profile's undeliverable messages to relay-dead-letter",
        )
    ]


def test_gcloud_script_is_runnable_shell(tmp_path: Path) -> None:
    topology = load_topology(REPO / "relay.yaml", project="acme-prod")

    script = gcloud_script(topology)

    lines = script.splitlines()
    assert lines[2] == (
        "PROJECT_NUMBER=\"$(gcloud projects describe acme-prod --format='value(projectNumber)')\""
    )
    assert (
        "gcloud pubsub topics add-iam-policy-binding relay-echo-requests --project=acme-prod "
        "--member=serviceAccount:relay-airflow@acme-prod.iam.gserviceaccount.com "
        "--role=roles/pubsub.publisher"
    ) in lines
    assert (
        "gcloud run services add-iam-policy-binding echo --region=europe-west1 --project=acme-prod "
        "--member=serviceAccount:relay-push@acme-prod.iam.gserviceaccount.com "
        "--role=roles/run.invoker"
    ) in lines
    assert (
        "gcloud pubsub subscriptions add-iam-policy-binding echo-push --project=acme-prod "
        '--member="serviceAccount:service-${PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com" '
        "--role=roles/pubsub.subscriber"
    ) in lines
    assert any(
        line.startswith("gcloud iam roles create relayWaiter --project=acme-prod") for line in lines
    )
    # Every non-comment line is a gcloud command or the project-number lookup; bash can parse it.
    commands = [line for line in lines if line and not line.startswith("#")]
    assert all(line.startswith(("gcloud ", "PROJECT_NUMBER=")) for line in commands)
    checked = subprocess.run(
        ["bash", "-n"], input=script, text=True, capture_output=True, check=False
    )
    assert checked.returncode == 0, checked.stderr


def test_a_wait_project_takes_the_waiter_role_and_the_topic_keeps_the_attach_grant() -> None:
    text = (
        (REPO / "relay.yaml")
        .read_text()
        .replace(
            "    waits_on: [relay-results]\n",
            "    waits_on: [relay-results]\n    wait_project: acme-waits\n",
        )
    )
    from relay.topology import parse_topology

    topology = parse_topology(text, check_sources=False, project="acme-prod")
    airflow = "serviceAccount:relay-airflow@acme-prod.iam.gserviceaccount.com"
    bindings = {(b.kind, b.resource, b.role, b.member) for b in iam_bindings(topology)}
    assert ("project", "acme-waits", "projects/acme-waits/roles/relayWaiter", airflow) in bindings
    assert ("topic", "relay-results", "roles/pubsub.subscriber", airflow) in bindings
    assert not any(kind == "project" and where == "acme-prod" for kind, where, *_ in bindings)
    lines = gcloud_script(topology).splitlines()
    create_role = "gcloud iam roles create relayWaiter --project=acme-waits"
    assert any(line.startswith(create_role) for line in lines)
    assert (
        "gcloud projects add-iam-policy-binding acme-waits --member="
        f"{airflow} --role=projects/acme-waits/roles/relayWaiter --condition=None"
    ) in lines
