"""relay: Airflow and Cloud Functions, decoupled through Pub/Sub CloudEvents."""

__version__ = "0.1.0"
