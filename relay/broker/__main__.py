"""`python -m relay.broker` = `relay broker`."""

from relay.broker.cli import broker

broker(prog_name="relay broker")
