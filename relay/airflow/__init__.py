"""relay's Airflow provider. Kept import-light: Airflow's provider discovery imports this module."""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    """Describe relay to Airflow's providers manager (entry point `apache_airflow_provider`)."""
    return {
        "package-name": "relay",
        "name": "relay",
        "description": "Publish CloudEvent requests to Cloud Functions over Pub/Sub and wait for results.",
        "versions": ["0.1.0"],
    }
