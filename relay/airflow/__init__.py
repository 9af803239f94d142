"""relay's Airflow provider. Kept import-light: Airflow's provider discovery imports this module.

The operators, sensor, triggers and hook live in relay.airflow.operators, .sensors, .triggers and
.hooks (see docs/airflow.md).
"""

from __future__ import annotations

from typing import Any

_INTEGRATION = "relay"


def get_provider_info() -> dict[str, Any]:
    """Describe relay to Airflow's providers manager (entry point `apache_airflow_provider`)."""
    return {
        "package-name": "relay",
        "name": "relay",
        "description": (
            "Publish CloudEvent requests to Cloud Functions over Pub/Sub and wait for results."
        ),
        "versions": ["0.1.0"],
        "integrations": [
            {
                "integration-name": _INTEGRATION,
                "tags": ["gcp", "service"],
            }
        ],
        "operators": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": ["relay.airflow.operators"],
            }
        ],
        "sensors": [
            {"integration-name": _INTEGRATION, "python-modules": ["relay.airflow.sensors"]}
        ],
        "hooks": [{"integration-name": _INTEGRATION, "python-modules": ["relay.airflow.hooks"]}],
        "triggers": [
            {"integration-name": _INTEGRATION, "python-modules": ["relay.airflow.triggers"]}
        ],
    }
