"""The Celery app, configured from Settings; `celery -A workers.celery_app worker|beat`."""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init

from newsletter.config import Settings, get_settings
from newsletter.db import engine_for
from workers.schedule import beat_schedule


def make_app(settings: Settings) -> Celery:
    """A Celery app on the configured Redis, with the beat schedule from Settings."""
    celery = Celery("newsletter", broker=settings.redis_url, backend=settings.redis_url, include=["workers.tasks"])
    visibility = settings.celery_visibility_timeout_seconds
    celery.conf.update(
        # A task is acknowledged after it ran, so a worker killed mid-task leaves it for another.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=24 * 3600,
        broker_connection_retry_on_startup=True,
        # Unacknowledged messages of a dead worker come back after the visibility timeout;
        # sweep often enough that a short timeout (tests) is honoured.
        broker_transport_options={
            "visibility_timeout": visibility,
            "unacked_restore_interval": max(1, min(10, int(visibility / 5))),
            "unacked_restore_throttle": 1,
        },
        worker_send_task_events=True,
        task_send_sent_event=True,
        timezone=settings.beat_timezone,
        enable_utc=True,
        beat_schedule=beat_schedule(settings),
    )
    return celery


settings = get_settings()
app = make_app(settings)
celery_app = app


@worker_process_init.connect
def _dispose_inherited_connections(**_: object) -> None:
    # A forked worker must not reuse the parent's pooled database connections.
    engine_for(settings.database_url).dispose(close=False)
