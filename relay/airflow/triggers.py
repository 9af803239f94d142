"""relay's triggers (importable by the triggerer from the installed package).

- RelayResultTrigger: wait for results by correlation id, woken by one shared subscriber per
  process.
- RelayHttpInvokeTrigger: POST a CloudEvent with retries; ID token minted in the triggerer.
- RelayRequestTrigger: a whole call, fan-out, invoke or result wait of a task started in the
  triggerer.
"""

from relay.airflow._http_trigger import RelayHttpInvokeTrigger
from relay.airflow._request_trigger import RelayRequestTrigger
from relay.airflow._result_trigger import COLLECT_ALL, FAIL_FAST, RelayResultTrigger
from relay.airflow._wakehub import close_all as close_wake_hubs

__all__ = [
    "COLLECT_ALL",
    "FAIL_FAST",
    "RelayHttpInvokeTrigger",
    "RelayRequestTrigger",
    "RelayResultTrigger",
    "close_wake_hubs",
]
