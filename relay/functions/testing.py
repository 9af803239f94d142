"""Helpers for testing relay functions without Pub/Sub: a publisher that records messages."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from relay.protocol import Message


@dataclass
class RecordingPublisher:
    """A ResultPublisher that keeps (topic, message) pairs instead of publishing them."""

    published: list[tuple[str, Message]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def publish(self, topic: str, message: Message, timeout: float) -> str:
        """Record the message; returns a sequential fake message id."""
        with self._lock:
            self.published.append((topic, message))
            return str(len(self.published))
