"""dead_letter: answers every request dead-lettered by Pub/Sub with a failed result.

Subscribe it to the dead-letter topic of your function's subscription, so a request that spent
its retry budget still reaches the waiting Airflow sensor (error type "DeadLettered",
retryable=true, attempt = CloudPubSubDeadLetterSourceDeliveryCount).

Run locally:  functions-framework --source functions/dead_letter/main.py --target dead_letter
"""

from __future__ import annotations

from relay.functions import dead_letter_function

dead_letter = dead_letter_function(name="dead_letter")
