"""`relay provision`: create or update a topology's topics and subscriptions, idempotently.

`provision(topology, dry_run=...)` returns a `Plan` (create/update/unchanged/conflict per
resource); `gcloud_script(topology)` is the least-privilege IAM to grant. See docs/topology.md.
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
from relay.provision._iam import SERVICE_AGENT, Binding, gcloud_command, gcloud_script, iam_bindings
from relay.provision._pubsub import (
    Change,
    Plan,
    ProvisionError,
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
    "provision",
    "subscription_path",
    "topic_path",
    "trigger_subscription_prefix",
]
