"""The Celery app, configured from Settings; `celery -A workers.celery_app worker|beat`."""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init

from newsletter.config import get_settings
from newsletter.db import engine_for

settings = get_settings()

app = Celery("newsletter", broker=settings.redis_url, backend=settings.redis_url, include=["workers.tasks"])
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=7 * 24 * 3600,
    broker_connection_retry_on_startup=True,
    timezone="America/New_York",
    enable_utc=True,
)
celery_app = app


@worker_process_init.connect
def _dispose_inherited_connections(**_: object) -> None:
    # A forked worker must not reuse the parent's pooled database connections.
    engine_for(settings.database_url).dispose(close=False)
