"""`python -m benchmarks`: run every benchmark (today: the broker's)."""

from benchmarks.broker import main

main()
