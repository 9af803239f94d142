"""The IAM relay.yaml needs: each identity gets what Google documents for what it does, on its own
resources only; what Pub/Sub cannot set is a gcloud script and `project_grants` data."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from relay.provision import SERVICE_AGENT, Binding, gcloud_script, iam_bindings, project_grants
from relay.topology import load_topology, parse_topology

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = "serviceAccount:relay-airflow@relay-local.iam.gserviceaccount.com"
FUNCTIONS = "serviceAccount:relay-functions@relay-local.iam.gserviceaccount.com"
PUSH = "serviceAccount:relay-push@relay-local.iam.gserviceaccount.com"
PUSH_EMAIL = "relay-push@relay-local.iam.gserviceaccount.com"
AGENT = "serviceAccount:service-123@gcp-sa-pubsub.iam.gserviceaccount.com"
OPS = "user:ops@example.com"
WAITS = "relay-local-waits"


def test_bindings_of_the_repository_topology_are_least_privilege() -> None:
    topology = load_topology(REPO / "relay.yaml")

    bindings = {(b.kind, b.resource, b.role, b.member) for b in iam_bindings(topology)}

    assert bindings == {
        ("topic", "relay-echo-requests", "roles/pubsub.publisher", AIRFLOW),
        ("topic", "relay-csv-profile-requests", "roles/pubsub.publisher", AIRFLOW),
        ("topic", "relay-results", "roles/pubsub.subscriber", AIRFLOW),
        # The waiter role in the wait project only: Airflow's task subscriptions live there.
        ("project", WAITS, f"projects/{WAITS}/roles/relayWaiter", AIRFLOW),
        ("topic", "relay-results", "roles/pubsub.publisher", FUNCTIONS),
        ("function", "echo", "roles/run.invoker", PUSH),
        ("function", "csv-profile", "roles/run.invoker", PUSH),
        ("function", "dead-letter", "roles/run.invoker", PUSH),
        ("function", "echo", "roles/run.invoker", AIRFLOW),  # the direct HTTPS path
        ("topic", "relay-dead-letter", "roles/pubsub.publisher", SERVICE_AGENT),
        ("subscription", "echo-push", "roles/pubsub.subscriber", SERVICE_AGENT),
        ("subscription", "csv-profile-push", "roles/pubsub.subscriber", SERVICE_AGENT),
        # The dead-letter function's own subscription dead-letters to the terminal topic.
        ("topic", "relay-undeliverable", "roles/pubsub.publisher", SERVICE_AGENT),
        ("subscription", "dead-letter-push", "roles/pubsub.subscriber", SERVICE_AGENT),
        ("service_account", PUSH_EMAIL, "roles/iam.serviceAccountTokenCreator", SERVICE_AGENT),
    }
    # No identity gets a project-wide Pub/Sub role.
    assert not any(
        role.startswith("roles/pubsub") for kind, _, role, _ in bindings if kind == "project"
    )
    # A function identity has nothing on request topics; Airflow nothing on function
    # subscriptions; the push identity nothing in Pub/Sub at all.
    held = {
        member: {(kind, where) for kind, where, _, m in bindings if m == member}
        for member in (AIRFLOW, FUNCTIONS, PUSH)
    }
    requests = {("topic", topic) for topic in topology.request_topics}
    assert held[FUNCTIONS] == {("topic", "relay-results")}
    assert not held[FUNCTIONS] & requests
    subscriptions = {("subscription", f.subscription) for f in topology.functions.values()}
    assert not held[AIRFLOW] & subscriptions
    assert ("project", "relay-local") not in held[AIRFLOW]
    assert all(kind == "function" for kind, _ in held[PUSH])


def test_project_grants_of_relay_yaml_are_what_google_documents() -> None:
    """Google: CreateSubscription needs pubsub.subscriptions.create on the project (and
    attachSubscription on the topic, set through Pub/Sub); Seek and pulls need
    pubsub.subscriptions.consume, DeleteSubscription pubsub.subscriptions.delete; a push
    subscription's OIDC token needs iam.serviceAccounts.actAs on its account for whoever creates
    it, and the service agent's token creator role (in projects from before 2021-04-08)."""
    topology = load_topology(REPO / "relay.yaml")

    grants = project_grants(topology, project_number=123, provisioner=OPS)

    push = f"projects/relay-local/serviceAccounts/{PUSH_EMAIL}"
    assert grants == {
        "roles": {
            f"projects/{WAITS}/roles/relayWaiter": [
                "pubsub.subscriptions.create",
                "pubsub.subscriptions.consume",
                "pubsub.subscriptions.delete",
            ]
        },
        "bindings": [
            {
                "resource": f"projects/{WAITS}",
                "role": f"projects/{WAITS}/roles/relayWaiter",
                "members": [AIRFLOW],
            },
            {
                "resource": push,
                "role": "roles/iam.serviceAccountTokenCreator",
                "members": [AGENT],
            },
            {"resource": "projects/relay-local", "role": "roles/pubsub.admin", "members": [OPS]},
            {"resource": push, "role": "roles/iam.serviceAccountUser", "members": [OPS]},
        ],
    }
    assert json.loads(json.dumps(grants)) == grants
    reasons = {
        (b.resource, b.role): b.reason
        for b in iam_bindings(topology, project_number=123, provisioner=OPS)
        if b.kind in ("project", "service_account")
    }
    assert reasons == {
        (WAITS, f"projects/{WAITS}/roles/relayWaiter"): (
            "airflow creates, seeks, pulls and deletes its task subscriptions in project "
            f"{WAITS} (pubsub.subscriptions.create on the project; consume and delete on "
            "subscriptions that only exist once it made them)"
        ),
        (PUSH_EMAIL, "roles/iam.serviceAccountTokenCreator"): (
            f"Pub/Sub signs push OIDC tokens as {PUSH_EMAIL} (granted automatically in projects "
            "created after 2021-04-08)"
        ),
        ("relay-local", "roles/pubsub.admin"): (
            f"{OPS} runs relay provision: creates and updates the topics and subscriptions "
            "(pubsub.topics.create and pubsub.subscriptions.create on the project, get and update "
            "on each, pubsub.topics.attachSubscription) and sets their IAM policies "
            "(getIamPolicy and setIamPolicy on each)"
        ),
        (PUSH_EMAIL, "roles/iam.serviceAccountUser"): (
            f"{OPS} creates the push subscriptions whose OIDC tokens are signed as {PUSH_EMAIL} "
            "(CreateSubscription and UpdateSubscription with an oidc_token need "
            "iam.serviceAccounts.actAs on it)"
        ),
    }


def test_project_grants_leave_out_what_needs_a_number_or_a_provisioner() -> None:
    topology = load_topology(REPO / "relay.yaml")

    grants = project_grants(topology)

    assert grants["bindings"] == [
        {
            "resource": f"projects/{WAITS}",
            "role": f"projects/{WAITS}/roles/relayWaiter",
            "members": [AIRFLOW],
        }
    ]
    assert list(grants["roles"]) == [f"projects/{WAITS}/roles/relayWaiter"]


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
            "Pub/Sub forwards echo's undeliverable messages to relay-dead-letter (its service "
            "agent publishes them there); Pub/Sub forwards csv-profile's undeliverable messages "
            "to relay-dead-letter (its service agent publishes them there)",
        )
    ]


def _commands(script: str) -> list[str]:
    return [line for line in script.splitlines() if line and not line.startswith("#")]


def test_gcloud_script_lists_what_pubsub_cannot_set_and_is_runnable_shell() -> None:
    topology = load_topology(REPO / "relay.yaml", project="acme-prod")

    script = gcloud_script(topology, project_number=123, provisioner=OPS)

    push = "relay-push@acme-prod.iam.gserviceaccount.com"
    assert _commands(script) == [
        "gcloud iam roles create relayWaiter --project=acme-prod-waits --title='relay waiter' "
        "--stage=GA --permissions=pubsub.subscriptions.create,pubsub.subscriptions.consume,"
        "pubsub.subscriptions.delete",
        "gcloud projects add-iam-policy-binding acme-prod-waits "
        "--member=serviceAccount:relay-airflow@acme-prod.iam.gserviceaccount.com "
        "--role=projects/acme-prod-waits/roles/relayWaiter --condition=None",
        "gcloud run services add-iam-policy-binding echo --region=europe-west1 --project=acme-prod "
        "--member=serviceAccount:relay-airflow@acme-prod.iam.gserviceaccount.com "
        "--role=roles/run.invoker",
        *(
            f"gcloud run services add-iam-policy-binding {name} --region=europe-west1 "
            f"--project=acme-prod --member=serviceAccount:{push} --role=roles/run.invoker"
            for name in ("echo", "csv-profile", "dead-letter")
        ),
        f"gcloud iam service-accounts add-iam-policy-binding {push} --project=acme-prod "
        f"--member={AGENT} --role=roles/iam.serviceAccountTokenCreator",
        f"gcloud projects add-iam-policy-binding acme-prod --member={OPS} "
        "--role=roles/pubsub.admin --condition=None",
        f"gcloud iam service-accounts add-iam-policy-binding {push} --project=acme-prod "
        f"--member={OPS} --role=roles/iam.serviceAccountUser",
    ]
    lines = script.splitlines()
    assert all(lines[lines.index(command) - 1].startswith("# ") for command in _commands(script))
    assert (
        "# The wait project acme-prod-waits must exist with the Pub/Sub API enabled (gcloud "
        "services enable pubsub.googleapis.com --project=acme-prod-waits)."
    ) in lines
    checked = subprocess.run(
        ["bash", "-n"], input=script, text=True, capture_output=True, check=False
    )
    assert checked.returncode == 0, checked.stderr


def test_without_the_project_number_the_script_keeps_the_service_agents_pubsub_bindings() -> None:
    topology = load_topology(REPO / "relay.yaml", project="acme-prod")

    script = gcloud_script(topology)

    lines = script.splitlines()
    assert lines[2] == (
        "PROJECT_NUMBER=\"$(gcloud projects describe acme-prod --format='value(projectNumber)')\""
    )
    agent = (
        '--member="serviceAccount:service-${PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"'
    )
    assert (
        f"gcloud pubsub subscriptions add-iam-policy-binding echo-push --project=acme-prod {agent} "
        "--role=roles/pubsub.subscriber"
    ) in lines
    assert (
        f"gcloud pubsub topics add-iam-policy-binding relay-undeliverable --project=acme-prod "
        f"{agent} --role=roles/pubsub.publisher"
    ) in lines
    # Not what relay provision sets itself: the identities' topic bindings.
    assert not any("relay-airflow" in line and "gcloud pubsub" in line for line in lines)
    assert any(line.startswith("# Whoever runs relay provision needs") for line in lines)
    checked = subprocess.run(
        ["bash", "-n"], input=script, text=True, capture_output=True, check=False
    )
    assert checked.returncode == 0, checked.stderr


def test_the_full_script_has_every_binding() -> None:
    topology = load_topology(REPO / "relay.yaml", project="acme-prod")

    script = gcloud_script(topology, project_number=123, include_pubsub=True)

    commands = _commands(script)
    assert len(commands) == 1 + len(iam_bindings(topology))  # the custom role, then each
    assert (
        "gcloud pubsub topics add-iam-policy-binding relay-echo-requests --project=acme-prod "
        "--member=serviceAccount:relay-airflow@acme-prod.iam.gserviceaccount.com "
        "--role=roles/pubsub.publisher"
    ) in commands


def test_a_wait_project_takes_the_waiter_role_and_the_topic_keeps_the_attach_grant() -> None:
    text = (
        (REPO / "relay.yaml")
        .read_text()
        .replace('    wait_project: "{project}-waits"\n', "    wait_project: acme-waits\n")
    )
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
    assert project_grants(topology)["roles"] == {
        "projects/acme-waits/roles/relayWaiter": [
            "pubsub.subscriptions.create",
            "pubsub.subscriptions.consume",
            "pubsub.subscriptions.delete",
        ]
    }
