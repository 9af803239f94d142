"""Child process of benchmarks.pipeline: `dag.test()` one DAG, write timings as JSON.

`python -m benchmarks._pipeline_child DAG_FILE DAG_ID CONF_JSON REPORT`. Like relay.demo's
`--run-dag`, plus each task instance's start/end (epoch seconds) from the metadata DB.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

from relay.demo import _xcom


def main(argv: list[str]) -> int:
    """Load the DAG file, dag.test() it, write state, summary and task times to REPORT."""
    dag_file, dag_id, conf, report = argv
    spec = importlib.util.spec_from_file_location(f"_relay_bench_{dag_id}", dag_file)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {dag_file}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from airflow.sdk import DAG

    dags = [v for v in vars(module).values() if isinstance(v, DAG) and v.dag_id == dag_id]
    if not dags:
        raise SystemExit(f"no DAG {dag_id!r} in {dag_file}")
    started = time.time()
    run = dags[0].test(run_conf=json.loads(conf))
    ended = time.time()
    tasks: list[dict[str, Any]] = []
    for ti in run.get_task_instances():
        tasks.append(
            {
                "task": ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""),
                "state": str(ti.state),
                "start": ti.start_date.timestamp() if ti.start_date else None,
                "end": ti.end_date.timestamp() if ti.end_date else None,
            }
        )
    Path(report).write_text(
        json.dumps(
            {
                "state": str(run.state),
                "test_start": started,
                "test_end": ended,
                "tasks": tasks,
                "summary": _xcom(run, "summarize") or _summary_key(run),
            },
            indent=2,
        )
    )
    return 0 if str(run.state) == "success" else 1


def _summary_key(run: Any) -> Any:
    """The provider variant's summary: XCom key "summary" of whichever task stopped the chain."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id=run.dag_id, run_id=run.run_id, key="summary")
            .one_or_none()
        )
        return None if row is None else XComModel.deserialize_value(row)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
