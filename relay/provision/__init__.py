"""`relay provision`: create or update a topology's topics and subscriptions, idempotently, and
set their least-privilege IAM bindings through Pub/Sub.

`provision(topology, dry_run=...)` returns a `Plan` (create/update/unchanged/conflict per
resource, add/present per IAM binding); what Pub/Sub cannot set (project roles, service accounts,
Cloud Run) is `gcloud_script(topology)` to review and run, and `project_grants(topology)` as data
(what `relay broker --grants` reads). See docs/topology.md.
"""

from relay.provision._desired import (
    PushSettings,
    SubscriptionSettings,
    TopicSettings,
    desired_subscriptions,
    desired_topics,
    subscription_path,
    topic_path,
    trigger_subscription_prefix,
)
from relay.provision._errors import ProvisionError
from relay.provision._iam import (
    SERVICE_AGENT,
    Binding,
    gcloud_command,
    gcloud_script,
    iam_bindings,
    project_grants,
    service_agent,
)
from relay.provision._policies import IamChange
from relay.provision._pubsub import (
    Change,
    Plan,
    admin_clients,
    apply,
    configure_triggers,
    plan,
    provision,
)

__all__ = [
    "SERVICE_AGENT",
    "Binding",
    "Change",
    "IamChange",
    "Plan",
    "ProvisionError",
    "PushSettings",
    "SubscriptionSettings",
    "TopicSettings",
    "admin_clients",
    "apply",
    "configure_triggers",
    "desired_subscriptions",
    "desired_topics",
    "gcloud_command",
    "gcloud_script",
    "iam_bindings",
    "plan",
    "project_grants",
    "provision",
    "service_agent",
    "subscription_path",
    "topic_path",
    "trigger_subscription_prefix",
]
