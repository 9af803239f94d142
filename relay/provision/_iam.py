"""The least-privilege IAM bindings a topology needs, and what cannot be set through Pub/Sub.

Each identity gets roles on its own resources only, each binding with the reason Google's
documentation gives for it. `relay provision` sets the topic and subscription bindings itself
through Pub/Sub's IAM methods (`_policies`); the rest (custom roles, project-level roles, roles on
service accounts and Cloud Run services) is printed as a reviewable gcloud script
(`gcloud_script`) and given as data (`project_grants`, what `relay broker --grants` reads).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any, Literal

from relay.provision._desired import trigger_subscription_prefix
from relay.topology import Topology

ResourceKind = Literal[
    "topic", "subscription", "trigger_subscription", "function", "service_account", "project"
]

PUBSUB_KINDS: tuple[ResourceKind, ...] = ("topic", "subscription")
"""The kinds of resource whose IAM policy Pub/Sub itself serves (GetIamPolicy/SetIamPolicy)."""

WAITER_ROLE_ID = "relayWaiter"
WAITER_PERMISSIONS = (
    "pubsub.subscriptions.create",
    "pubsub.subscriptions.consume",
    "pubsub.subscriptions.delete",
)
"""A custom role for Airflow's task subscriptions: CreateSubscription needs `create` on the
project; Seek (to a time), pulls, acks and deadline changes need `consume`; DeleteSubscription
`delete`. Those subscriptions do not exist before Airflow makes them, so these are granted on the
(wait) project. No topic or publish rights: attaching to the topic is granted on the topic."""

SERVICE_AGENT = "serviceAccount:service-${PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
"""The project's Pub/Sub service agent while its project number is unknown (the script looks the
number up; nothing else can use this placeholder)."""

PROVISIONER_ROLE = "roles/pubsub.admin"
"""The smallest predefined role that creates and updates topics and subscriptions and sets their
IAM policies (roles/pubsub.editor has no setIamPolicy)."""


@dataclass(frozen=True)
class Binding:
    """One role for one member on one resource, and why.

    `resource` is short: a topic or subscription id, a function name, a service account's email
    or a project id."""

    kind: ResourceKind
    resource: str
    role: str
    member: str
    reason: str


def service_agent(project_number: int | None) -> str:
    """The member of the project's Pub/Sub service agent (`SERVICE_AGENT` when the number is
    unknown)."""
    if project_number is None:
        return SERVICE_AGENT
    return f"serviceAccount:service-{project_number}@gcp-sa-pubsub.iam.gserviceaccount.com"


def waiter_role(project: str) -> str:
    """The full name of the custom waiter role in `project`."""
    return f"projects/{project}/roles/{WAITER_ROLE_ID}"


def settable(binding: Binding) -> bool:
    """Whether Pub/Sub's own SetIamPolicy can grant it (a topic or subscription binding whose
    member is known)."""
    return binding.kind in PUBSUB_KINDS and binding.member != SERVICE_AGENT


def iam_bindings(
    topology: Topology, *, project_number: int | None = None, provisioner: str | None = None
) -> tuple[Binding, ...]:
    """Every binding the topology needs: identities first, then the Pub/Sub service agent's
    (`SERVICE_AGENT` as member unless `project_number` is given), then, with `provisioner` (an
    IAM member), what the account that runs `relay provision` needs."""
    bindings = [*_identity_bindings(topology)]
    bindings.extend(_service_agent_bindings(topology, service_agent(project_number)))
    if provisioner is not None:
        bindings.extend(_provisioner_bindings(topology, provisioner))
    return _merge(bindings)


def _identity_bindings(topology: Topology) -> list[Binding]:
    bindings: list[Binding] = []
    for identity in topology.identities.values():
        name, member = identity.name, identity.member
        for topic in identity.publishes:
            bindings.append(
                Binding(
                    "topic",
                    topic,
                    "roles/pubsub.publisher",
                    member,
                    f"{name} publishes to {topic} (Publish needs pubsub.topics.publish on it)",
                )
            )
        for subscription in identity.subscribes:
            bindings.append(
                Binding(
                    "subscription",
                    subscription,
                    "roles/pubsub.subscriber",
                    member,
                    f"{name} pulls from {subscription} (pulls and acks need "
                    "pubsub.subscriptions.consume on it)",
                )
            )
        for topic in identity.waits_on:
            bindings.append(
                Binding(
                    "topic",
                    topic,
                    "roles/pubsub.subscriber",
                    member,
                    f"{name} attaches its task subscriptions to {topic} (CreateSubscription needs "
                    "pubsub.topics.attachSubscription on the topic, the one permission of this "
                    "role that applies to a topic)",
                )
            )
        if identity.waits_on:
            project = identity.wait_project or topology.project
            bindings.append(
                Binding(
                    "project",
                    project,
                    waiter_role(project),
                    member,
                    f"{name} creates, seeks, pulls and deletes its task subscriptions in project "
                    f"{project} (pubsub.subscriptions.create on the project; consume and delete "
                    "on subscriptions that only exist once it made them)",
                )
            )
        for function_name in identity.invokes:
            bindings.append(
                Binding(
                    "function",
                    function_name,
                    "roles/run.invoker",
                    member,
                    f"{name} invokes {function_name} (Cloud Run checks run.routes.invoke on the "
                    "function's service for the ID token's identity)",
                )
            )
    return bindings


def _service_agent_bindings(topology: Topology, agent: str) -> list[Binding]:
    bindings: list[Binding] = []
    for function in topology.functions.values():
        if function.dead_letter_topic is None:
            continue
        bindings.append(
            Binding(
                "topic",
                function.dead_letter_topic,
                "roles/pubsub.publisher",
                agent,
                f"Pub/Sub forwards {function.name}'s undeliverable messages to "
                f"{function.dead_letter_topic} (its service agent publishes them there)",
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
                agent,
                f"Pub/Sub acknowledges what it dead-letters from {function.subscription} (its "
                "service agent acks them there)",
            )
        )
    for account in _push_accounts(topology):
        bindings.append(
            Binding(
                "service_account",
                account,
                "roles/iam.serviceAccountTokenCreator",
                agent,
                f"Pub/Sub signs push OIDC tokens as {account} "
                "(granted automatically in projects created after 2021-04-08)",
            )
        )
    return bindings


def _provisioner_bindings(topology: Topology, provisioner: str) -> list[Binding]:
    bindings = [
        Binding(
            "project",
            topology.project,
            PROVISIONER_ROLE,
            provisioner,
            f"{provisioner} runs relay provision: creates and updates the topics and "
            "subscriptions (pubsub.topics.create and pubsub.subscriptions.create on the project, "
            "get and update on each, pubsub.topics.attachSubscription) and sets their IAM "
            "policies (getIamPolicy and setIamPolicy on each)",
        )
    ]
    for account in _push_accounts(topology):
        bindings.append(
            Binding(
                "service_account",
                account,
                "roles/iam.serviceAccountUser",
                provisioner,
                f"{provisioner} creates the push subscriptions whose OIDC tokens are signed as "
                f"{account} (CreateSubscription and UpdateSubscription with an oidc_token need "
                "iam.serviceAccounts.actAs on it)",
            )
        )
    return bindings


def _push_accounts(topology: Topology) -> list[str]:
    """The service accounts that sign push OIDC tokens, each once, in function order."""
    accounts = (topology.push_service_account(f) for f in topology.functions.values())
    return list(dict.fromkeys(account for account in accounts if account))


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


def service_account_resource(email: str, project: str) -> str:
    """`projects/P/serviceAccounts/EMAIL`, P from NAME@P.iam.gserviceaccount.com, else `project`."""
    name, _, domain = email.partition("@")
    owner, dot, rest = domain.partition(".")
    if name and dot and rest == "iam.gserviceaccount.com":
        project = owner
    return f"projects/{project}/serviceAccounts/{email}"


def project_grants(
    topology: Topology, *, project_number: int | None = None, provisioner: str | None = None
) -> dict[str, Any]:
    """The grants Pub/Sub's own IAM methods cannot set, as JSON-able data (`relay broker
    --grants` reads it): `{"roles": {name: [permission, ...]}, "bindings": [{"resource",
    "role", "members"}]}`, resources being projects (`projects/P`) and service accounts
    (`projects/P/serviceAccounts/EMAIL`).

    The service agent's token creator binding needs `project_number`, the provisioner's
    bindings `provisioner`; without them they are left out. Cloud Run invoker bindings are not
    Pub/Sub's and not in this form: they are in `gcloud_script` only."""
    roles: dict[str, list[str]] = {}
    members: dict[tuple[str, str], list[str]] = {}
    for binding in iam_bindings(topology, project_number=project_number, provisioner=provisioner):
        if binding.kind == "project":
            resource = f"projects/{binding.resource}"
            if binding.role == waiter_role(binding.resource):
                roles[binding.role] = list(WAITER_PERMISSIONS)
        elif binding.kind == "service_account" and binding.member != SERVICE_AGENT:
            resource = service_account_resource(binding.resource, topology.project)
        else:
            continue
        members.setdefault((resource, binding.role), []).append(binding.member)
    return {
        "roles": roles,
        "bindings": [
            {"resource": resource, "role": role, "members": names}
            for (resource, role), names in members.items()
        ],
    }


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


def gcloud_script(
    topology: Topology,
    *,
    project_number: int | None = None,
    provisioner: str | None = None,
    include_pubsub: bool = False,
) -> str:
    """A reviewable shell script granting what `relay provision` does not set through Pub/Sub
    (every binding with `include_pubsub`), each binding preceded by its reason."""
    project = shlex.quote(topology.project)
    bindings = [
        b
        for b in iam_bindings(topology, project_number=project_number, provisioner=provisioner)
        if include_pubsub or not settable(b)
    ]
    what = (
        "every binding" if include_pubsub else "what relay provision does not set through Pub/Sub"
    )
    lines = [
        f"# Least-privilege IAM for relay in project {topology.project}: {what}.",
        "# Review, then run; the account running it needs setIamPolicy on these resources.",
    ]
    if any(b.member == SERVICE_AGENT for b in bindings):
        lines.append(
            f'PROJECT_NUMBER="$(gcloud projects describe {project} '
            "--format='value(projectNumber)')\""
        )
    for waiter_project in dict.fromkeys(
        b.resource for b in bindings if b.kind == "project" and b.role == waiter_role(b.resource)
    ):
        if waiter_project != topology.project:
            lines.append(
                f"# The wait project {waiter_project} must exist with the Pub/Sub API enabled "
                f"(gcloud services enable pubsub.googleapis.com --project={waiter_project})."
            )
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
    if provisioner is None:
        lines.append(
            f"# Whoever runs relay provision needs {PROVISIONER_ROLE} on project "
            f"{topology.project} and roles/iam.serviceAccountUser on each push service account "
            "(relay provision --provisioner MEMBER prints those commands)."
        )
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
