"""The time split of one pipeline run on a deployment: which part of the wall time went where.

Input: the run (REST: queued_at, end_date), each task instance's tries with their log entries
(REST task logs: the task process's and, merged in, its triggers'), and the csv-profile function's
busy intervals. Each instant of the wall time goes to the first of these that covers it:

1. functions: the function was handling at least one request;
2. settle: relay's deferral held its event back after the last result (relay/airflow/_settle.py);
3. task start-up: a task process from "Pre Execute" to "Worker startup parse complete";
4. publish+wait: the rest of the publish/wait tasks' processes, and their triggers running;
5. other tasks: the rest of the other tasks' processes (list_files, summarize);
6. Airflow scheduling: nothing of the above (queues, trigger pick-up, resume, run start and end).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

Intervals = list[tuple[float, float]]
COLUMNS = ("functions", "settle", "startup", "wait", "tasks", "scheduling")


@dataclass
class _Timeline:
    """One task try, read from its log: process parts (start, parse done, end) and triggers."""

    parts: list[list[float]] = field(default_factory=list)
    triggers: list[tuple[float, float]] = field(default_factory=list)


def epoch(stamp: str) -> float:
    """An Airflow ISO timestamp ("...Z") as epoch seconds."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def union(intervals: Iterable[tuple[float, float]]) -> Intervals:
    """Sorted, merged intervals."""
    merged: Intervals = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def length(intervals: Sequence[tuple[float, float]]) -> float:
    """Total length of intervals that do not overlap."""
    return sum(end - start for start, end in intervals)


def _minus(a: Intervals, b: Intervals) -> Intervals:
    """a without b (both merged)."""
    out: Intervals = []
    for start, end in a:
        cursor = start
        for b_start, b_end in b:
            if b_end <= cursor or b_start >= end:
                continue
            if b_start > cursor:
                out.append((cursor, b_start))
            cursor = max(cursor, b_end)
        if cursor < end:
            out.append((cursor, end))
    return out


def _timeline(entries: Sequence[tuple[float, str]], end_date: float | None) -> _Timeline:
    """Split a try's log into process parts and trigger runs (the log holds both, by time): a part
    runs from "Pre Execute" to its last line before a trigger starts; a trigger from "starting"
    to "Trigger fired event" (or "trigger completed")."""
    line = _Timeline()
    part: list[float] | None = None
    trigger_start: float | None = None
    for at, event in entries:
        if event.startswith("trigger ") and event.endswith(" starting"):
            trigger_start, part = at, None
        elif trigger_start is not None:
            if event in ("Trigger fired event", "trigger completed"):
                line.triggers.append((trigger_start, at))
                trigger_start = None
        elif event == "::group::Pre Execute":
            part = [at, at, at]
            line.parts.append(part)
        elif part is not None:
            if event == "Worker startup parse complete":
                part[1] = at
            part[2] = at
    if end_date is not None and line.parts:
        line.parts[-1][2] = max(line.parts[-1][2], end_date)
    return line


def split(
    record: dict[str, Any], busy: Intervals, wait_tasks: Iterable[str], settles: bool
) -> dict[str, Any]:
    """Seconds per column (COLUMNS) of one run, plus wall time, retries and deferral latencies.

    `record`: {"queued_at", "end_date" (epoch), "tis": [{"task_id", "try_number", "end_date",
    "tries": [[(epoch, event), ...] per try]}]}; `wait_tasks`: the publish/wait task ids;
    `settles`: whether the variant's deferrals have relay's settle delay ("settle" is None if not).
    """
    wall = (record["queued_at"], record["end_date"])
    waits = set(wait_tasks)
    spans: dict[str, Intervals] = {name: [] for name in COLUMNS}
    spans["functions"] = list(busy)
    pickup = resume = 0.0
    for ti in record["tis"]:
        tries = ti["tries"]
        for number, entries in enumerate(tries, start=1):
            line = _timeline(entries, ti["end_date"] if number == len(tries) else None)
            body = "wait" if ti["task_id"] in waits else "tasks"
            for start, ready, end in line.parts:
                spans["startup"].append((start, ready))
                spans[body].append((ready, end))
            spans["wait"].extend(line.triggers)
            for trigger_start, fired in line.triggers:
                before = [p[2] for p in line.parts if p[2] <= trigger_start]
                after = [p[0] for p in line.parts if p[0] >= fired]
                pickup += trigger_start - max(before) if before else 0.0
                resume += min(after) - fired if after else 0.0
                ends = [end for _, end in busy if end <= fired]
                if settles:
                    spans["settle"].append((max([trigger_start, *ends]), fired))
    out: dict[str, Any] = {"wall": wall[1] - wall[0], "pickup": pickup, "resume": resume}
    claimed: Intervals = []
    for name in COLUMNS[:-1]:
        own = _minus(_minus(union(spans[name]), claimed), [(wall[1], float("inf"))])
        own = _minus(own, [(float("-inf"), wall[0])])
        out[name] = length(own)
        claimed = union([*claimed, *own])
    out["scheduling"] = out["wall"] - length(claimed)
    if not settles:
        out["settle"] = None
    out["retries"] = sum(max(0, int(ti["try_number"]) - 1) for ti in record["tis"])
    return out


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: medians per size and variant (in the order they ran), each run in brackets."""
    head = (
        "| size | variant | ok | runs | wall | Airflow scheduling | task start-up | "
        "publish+wait | settle | functions (busy) | other tasks | fn sum | retries | "
        "trigger pick-up | resume |\n" + "|---" * 15 + "|"
    )
    rows = [head]
    order = {variant: n for n, variant in enumerate(dict.fromkeys(r["variant"] for r in results))}
    keys = {(r["size"], r["variant"]) for r in results}
    for size, variant in sorted(keys, key=lambda k: (k[0], order[k[1]])):
        runs = [r for r in results if r["size"] == size and r["variant"] == variant]
        good = [r for r in runs if "error" not in r]
        if not good:
            rows.append(f"| {size} | {variant} | error: {runs[0]['error']} |" + " |" * 12)
            continue
        cells = [_median(good, key) for key in ("wall", "scheduling", "startup", "wait")]
        cells.append("-" if good[0]["settle"] is None else _median(good, "settle"))
        cells += [_median(good, k) for k in ("functions", "tasks", "function_sum")]
        cells.append(", ".join(str(r["retries"]) for r in good))
        cells += [_median(good, "pickup"), _median(good, "resume")]
        ok = "yes" if all(r["ok"] for r in good) and len(good) == len(runs) else "NO"
        rows.append(f"| {size} | {variant} | {ok} | {len(good)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _median(runs: list[dict[str, Any]], key: str) -> str:
    values = [float(r[key]) for r in runs]
    text = f"{statistics.median(values):.1f}"
    if len(values) > 1:
        text += " (" + ", ".join(f"{v:.1f}" for v in values) + ")"
    return text
