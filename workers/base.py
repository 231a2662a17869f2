"""The task base class: every task runs inside a log context naming its tenant and record."""

from __future__ import annotations

from typing import Any

from celery import Task

from connector.logs import log_context


class ConnectorTask(Task):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with log_context(
            task=self.name,
            tenant=kwargs.get("tenant"),
            record_key=kwargs.get("key") or kwargs.get("webhook_event_id"),
            correlation_id=kwargs.get("run_id") or getattr(self.request, "id", None),
        ):
            return super().__call__(*args, **kwargs)
