"""A minimal task context for running an operator's ``execute`` outside a DAG run (tests, benchmarks)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


class TaskContext(dict):
    """
    The slice of an Airflow task context the Grok operator reads: ``ti`` (ids, try number, ``xcom_push``)
    and ``outlet_events``. Pushed XComs are kept in :attr:`pushed`.
    """

    def __init__(
        self,
        dag_id: str = "direct",
        task_id: str = "gen",
        run_id: str = "run_1",
        map_index: int = -1,
        try_number: int = 1,
    ) -> None:
        self.pushed: dict[str, Any] = {}
        ti = SimpleNamespace(
            dag_id=dag_id,
            task_id=task_id,
            run_id=run_id,
            map_index=map_index,
            try_number=try_number,
            xcom_push=self.xcom_push,
        )
        super().__init__(ti=ti, outlet_events={})

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value
