"""Run one DAG of a DAG file with dag.test() in a process of its own; print what it did.

`python _run_dag.py FILE DAG_ID` ends with one line `RESULT {"states": {task: state}, "xcom":
{task: return value}}`. The tests start it with the environment of one identity (GCE_METADATA_HOST
of its metadata server, the broker's CA, a Google connection with the API endpoint), set before
google-auth and gRPC are imported, as in an Airflow worker: nothing of google-auth is patched.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from typing import Any

RESULT = "RESULT "


def _return_value(ti: Any) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(
                dag_id=ti.dag_id,
                run_id=ti.run_id,
                task_id=ti.task_id,
                map_index=ti.map_index,
                key="return_value",
            )
            .one_or_none()
        )
        return None if row is None else XComModel.deserialize_value(row)


def main() -> None:
    path, dag_id = sys.argv[1], sys.argv[2]
    spec = importlib.util.spec_from_file_location("relay_run_dag", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from airflow.sdk import DAG

    (dag,) = [v for v in vars(module).values() if isinstance(v, DAG) and v.dag_id == dag_id]
    run = dag.test()
    instances = run.get_task_instances()
    outcome = {
        "states": {ti.task_id: str(ti.state) for ti in instances},
        "xcom": {ti.task_id: _return_value(ti) for ti in instances},
    }
    print(RESULT + json.dumps(outcome), flush=True)


if __name__ == "__main__":
    main()
