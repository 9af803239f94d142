"""The least-privilege IAM bindings a topology needs, and the gcloud commands that grant them.

relay never grants roles itself: the person running it may lack setIamPolicy, and a review of
printed commands is the point. Each identity gets roles on its own resources only.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Literal

from relay.provision._desired import trigger_subscription_prefix
from relay.topology import Topology

ResourceKind = Literal[
    "topic", "subscription", "trigger_subscription", "function", "service_account", "project"
]

WAITER_ROLE_ID = "relayWaiter"
WAITER_PERMISSIONS = (
    "pubsub.subscriptions.create",
    "pubsub.subscriptions.delete",
    "pubsub.subscriptions.get",
    "pubsub.subscriptions.consume",
)
"""A custom role for Airflow's task subscriptions (create, Seek, pull, delete): no topic or
publish rights of its own. Seek and pull need `consume`."""

SERVICE_AGENT = "serviceAccount:service-${PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
"""The project's Pub/Sub service agent (needs the project number, looked up by the script)."""


@dataclass(frozen=True)
class Binding:
    """One role for one member on one resource, and why."""

    kind: ResourceKind
    resource: str
    role: str
    member: str
    reason: str


def iam_bindings(topology: Topology) -> tuple[Binding, ...]:
    """Every binding the topology needs: identities first, then the Pub/Sub service agent."""
    bindings: list[Binding] = []
    for identity in topology.identities.values():
        for topic in identity.publishes:
            bindings.append(
                Binding(
                    "topic",
                    topic,
                    "roles/pubsub.publisher",
                    identity.member,
                    f"{identity.name} publishes to {topic}",
                )
            )
        for subscription in identity.subscribes:
            bindings.append(
                Binding(
                    "subscription",
                    subscription,
                    "roles/pubsub.subscriber",
                    identity.member,
                    f"{identity.name} pulls from {subscription}",
                )
            )
        for topic in identity.waits_on:
            bindings.append(
                Binding(
                    "topic",
                    topic,
                    "roles/pubsub.subscriber",
                    identity.member,
                    f"{identity.name} attaches its task subscriptions to {topic}",
                )
            )
        if identity.waits_on:
            project = identity.wait_project or topology.project
            bindings.append(
                Binding(
                    "project",
                    project,
                    f"projects/{project}/roles/{WAITER_ROLE_ID}",
                    identity.member,
                    f"{identity.name} creates, seeks, pulls and deletes its task subscriptions in "
                    f"project {project}",
                )
            )
        for function_name in identity.invokes:
            bindings.append(
                Binding(
                    "function",
                    function_name,
                    "roles/run.invoker",
                    identity.member,
                    f"{identity.name} invokes {function_name}",
                )
            )
    push_accounts: list[str] = []
    for function in topology.functions.values():
        account = topology.push_service_account(function)
        if account and account not in push_accounts:
            push_accounts.append(account)
        if function.dead_letter_topic is None:
            continue
        bindings.append(
            Binding(
                "topic",
                function.dead_letter_topic,
                "roles/pubsub.publisher",
                SERVICE_AGENT,
                f"Pub/Sub forwards {function.name}'s undeliverable messages to "
                f"{function.dead_letter_topic}",
            )
        )
        if function.delivery == "eventarc":
            bindings.append(
                Binding(
                    "trigger_subscription",
                    function.name,
                    "roles/pubsub.subscriber",
                    SERVICE_AGENT,
                    f"Pub/Sub acknowledges what it dead-letters from {function.name}'s Eventarc "
                    "trigger subscription (which exists once relay deploy created the function)",
                )
            )
            continue
        bindings.append(
            Binding(
                "subscription",
                function.subscription,
                "roles/pubsub.subscriber",
                SERVICE_AGENT,
                f"Pub/Sub acknowledges what it dead-letters from {function.subscription}",
            )
        )
    for account in push_accounts:
        bindings.append(
            Binding(
                "service_account",
                account,
                "roles/iam.serviceAccountTokenCreator",
                SERVICE_AGENT,
                f"Pub/Sub signs push OIDC tokens as {account} "
                "(granted automatically in projects created after 2021-04-08)",
            )
        )
    return _merge(bindings)


def _merge(bindings: list[Binding]) -> tuple[Binding, ...]:
    """One binding per (resource, role, member), reasons joined (a shared dead-letter topic)."""
    merged: dict[tuple[str, str, str, str], Binding] = {}
    for binding in bindings:
        key = (binding.kind, binding.resource, binding.role, binding.member)
        if key in merged:
            previous = merged[key]
            binding = Binding(*key, f"{previous.reason}; {binding.reason}")
        merged[key] = binding
    return tuple(merged.values())


def gcloud_command(binding: Binding, topology: Topology) -> str:
    """The gcloud command that grants one binding (a line of shell)."""
    member = (
        f'"{binding.member}"' if binding.member == SERVICE_AGENT else shlex.quote(binding.member)
    )
    resource = shlex.quote(binding.resource)
    project = shlex.quote(topology.project)
    flags = f"--project={project} --member={member} --role={binding.role}"
    if binding.kind == "topic":
        return f"gcloud pubsub topics add-iam-policy-binding {resource} {flags}"
    if binding.kind == "subscription":
        return f"gcloud pubsub subscriptions add-iam-policy-binding {resource} {flags}"
    if binding.kind == "trigger_subscription":
        function = topology.functions[binding.resource]
        prefix = trigger_subscription_prefix(topology, function).rpartition("/")[2]
        lookup = (
            f"$(gcloud pubsub topics list-subscriptions {shlex.quote(function.topic)} "
            f"--project={project} --format='value(.)' | grep -m1 /{prefix})"
        )
        return f'gcloud pubsub subscriptions add-iam-policy-binding "{lookup}" {flags}'
    if binding.kind == "function":
        # A 2nd-gen function is a Cloud Run service of the same name.
        region = shlex.quote(topology.region)
        return f"gcloud run services add-iam-policy-binding {resource} --region={region} {flags}"
    if binding.kind == "project":
        return (
            f"gcloud projects add-iam-policy-binding {resource} --member={member} "
            f"--role={binding.role} --condition=None"
        )
    return f"gcloud iam service-accounts add-iam-policy-binding {resource} {flags}"


def gcloud_script(topology: Topology) -> str:
    """A reviewable shell script granting every binding, each preceded by its reason."""
    project = shlex.quote(topology.project)
    lines = [
        f"# Least-privilege IAM for relay in project {topology.project}.",
        "# Review, then run; the account running it needs setIamPolicy on these resources.",
        f"PROJECT_NUMBER=\"$(gcloud projects describe {project} --format='value(projectNumber)')\"",
    ]
    bindings = iam_bindings(topology)
    for waiter_project in dict.fromkeys(b.resource for b in bindings if b.kind == "project"):
        lines.append(
            "# A custom role for relay's task subscriptions (once per project; IAM cannot narrow "
            "it to some subscriptions: a wait project of their own keeps it off the rest):"
        )
        lines.append(
            f"gcloud iam roles create {WAITER_ROLE_ID} --project={shlex.quote(waiter_project)} "
            f"--title='relay waiter' --stage=GA --permissions={','.join(WAITER_PERMISSIONS)}"
        )
    for binding in bindings:
        lines.append(f"# {binding.reason}")
        lines.append(gcloud_command(binding, topology))
    runtime = [
        f"#   {function.name}: --service-account="
        f"{topology.identities[function.runtime_identity].service_account}"
        for function in topology.functions.values()
        if function.runtime_identity is not None
        and topology.identities[function.runtime_identity].service_account
    ]
    if runtime:
        lines.append(
            "# relay deploy runs each function as its runtime identity (the account deploying "
            "needs iam.serviceAccounts.actAs on it):"
        )
        lines.extend(runtime)
    lines.append(
        "# 1st-gen functions: use `gcloud functions add-iam-policy-binding NAME "
        "--role=roles/cloudfunctions.invoker` instead of run.invoker."
    )
    return "\n".join(lines) + "\n"
