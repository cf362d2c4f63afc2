"""run ledger: typed run columns and a run_stage table instead of the run.stats JSON

Revision ID: 0002_run_ledger
Revises: 0001
Create Date: 2026-12-01

Existing runs are carried over: each stage's figures in run.stats become a run_stage row (its
counts in typed columns, the rest in `details`), and the keys that decided what happens next
(caught_up, harvest_failures, last_harvest_failure, the fan-out's start) become run columns.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002_run_ledger"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON_VALUE = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TIME = sqlmodel.sql.sqltypes.UTCDateTime()
STAGES = ("harvest", "match", "translate", "deliver")
# The stats key of each stage's typed count and the run_stage column it goes to.
COUNTS = {
    "harvest": {"announced": "announced"},
    "match": {"selections": "selections"},
    "translate": {"translated": "translated"},
    "deliver": {"recipients": "recipients", "sent": "sent", "failed": "failed", "claimed": "pending"},
}
# A failed run's reason starts with the stage (or the Celery task) that failed.
FAILED_STAGE = {"harvest": "harvest", "match": "match", "translate": "translate",
                "fan_out": "deliver", "send_digests": "deliver", "deliver": "deliver"}

old_run = sa.table(
    "run",
    sa.column("id", sa.Integer),
    sa.column("day", sa.Date),
    sa.column("status", sa.String),
    sa.column("reason", sa.Text),
    sa.column("started_at", TIME),
    sa.column("finished_at", TIME),
    sa.column("harvested_at", TIME),
    sa.column("stats", JSON_VALUE),
)
new_run = sa.table(
    "run",
    sa.column("id", sa.Integer),
    sa.column("failed_stage", sa.String),
    sa.column("caught_up", sa.Boolean),
    sa.column("harvest_failures", sa.Integer),
    sa.column("last_harvest_failure_at", TIME),
    sa.column("last_harvest_failure", sa.Text),
)
run_stage = sa.table(
    "run_stage",
    sa.column("run_id", sa.Integer),
    sa.column("stage", sa.String),
    sa.column("started_at", TIME),
    sa.column("finished_at", TIME),
    sa.column("seconds", sa.Float),
    sa.column("announced", sa.Integer),
    sa.column("selections", sa.Integer),
    sa.column("translated", sa.Integer),
    sa.column("recipients", sa.Integer),
    sa.column("queued", sa.Integer),
    sa.column("enqueued_at", TIME),
    sa.column("sent", sa.Integer),
    sa.column("failed", sa.Integer),
    sa.column("pending", sa.Integer),
    sa.column("details", JSON_VALUE),
)


def _time(value: Any, default: dt.datetime | None) -> dt.datetime | None:
    """An aware datetime from a stored ISO string (or the default when there is none)."""
    if not isinstance(value, str):
        return default
    parsed = dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    return value.replace(tzinfo=dt.UTC) if value is not None and value.tzinfo is None else value


def stage_rows_from_stats(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The run_stage rows an old run's stats describe."""
    stats, seconds = run["stats"] or {}, (run["stats"] or {}).get("seconds") or {}
    fanout = stats.get("fanout") or {}
    fallback = _aware(run["finished_at"]) or _aware(run["started_at"])
    rows = []
    for stage in STAGES:
        figures = dict(stats.get(stage) or {})
        if stage == "deliver" and fanout:
            figures = {"recipients": fanout.get("recipients"), **figures}
        if not figures:
            continue
        figures.pop("caught_up", None)
        row: dict[str, Any] = {column: None for column in ("announced", "selections", "translated", "recipients",
                                                           "queued", "enqueued_at", "sent", "failed", "pending")}
        for key, column in COUNTS[stage].items():
            value = figures.pop(key, None)
            row[column] = int(value) if isinstance(value, int | float) else None
        took = seconds.get(stage)
        took = float(took) if isinstance(took, int | float) else None
        finished = fallback if stage == "deliver" else _aware(run["harvested_at"]) if stage == "harvest" else None
        finished = finished or fallback
        started = finished - dt.timedelta(seconds=took) if finished is not None and took is not None else finished
        if stage == "deliver":
            started = _time(fanout.get("started_at"), started)
            row["queued"] = fanout.get("queued")
            row["enqueued_at"] = started if "enqueued" in stats else None
            figures["chunks"] = fanout.get("chunks")
            # A run still delivering has not finished its deliver stage.
            finished = finished if "deliver" in stats else None
        rows.append({**row, "run_id": run["id"], "stage": stage, "started_at": started or fallback,
                     "finished_at": finished, "seconds": took, "details": figures})
    return rows


def run_columns_from_stats(run: dict[str, Any]) -> dict[str, Any]:
    """The typed run columns an old run's stats and reason describe."""
    stats = run["stats"] or {}
    failure = stats.get("last_harvest_failure") or {}
    failed_stage = None
    if run["status"] == "failed" and run["reason"]:
        failed_stage = FAILED_STAGE.get(run["reason"].split(" failed", 1)[0].strip())
    return {
        "failed_stage": failed_stage,
        "harvest_failures": int(stats.get("harvest_failures") or 0),
        "last_harvest_failure": failure.get("reason"),
        "last_harvest_failure_at": _time(failure.get("at"), None) if failure else None,
    }


def upgrade() -> None:
    connection = op.get_bind()
    runs = [dict(row._mapping) for row in connection.execute(sa.select(old_run))]
    # The run table is rebuilt on SQLite (batch mode) before anything references it.
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("failed_stage", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("caught_up", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("harvest_failures", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("last_harvest_failure_at", TIME, nullable=True))
        batch_op.add_column(sa.Column("last_harvest_failure", sa.Text(), nullable=True))
        batch_op.drop_column("stats")
    op.create_table(
        "run_stage",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("finished_at", TIME, nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("announced", sa.Integer(), nullable=True),
        sa.Column("selections", sa.Integer(), nullable=True),
        sa.Column("translated", sa.Integer(), nullable=True),
        sa.Column("recipients", sa.Integer(), nullable=True),
        sa.Column("queued", sa.Integer(), nullable=True),
        sa.Column("enqueued_at", TIME, nullable=True),
        sa.Column("sent", sa.Integer(), nullable=True),
        sa.Column("failed", sa.Integer(), nullable=True),
        sa.Column("pending", sa.Integer(), nullable=True),
        sa.Column("details", JSON_VALUE, nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "stage"),
    )
    with op.batch_alter_table("run_stage", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_stage_run_id"), ["run_id"], unique=False)
    _carry_over(connection, runs)


def _carry_over(connection: sa.Connection, runs: list[dict[str, Any]]) -> None:
    caught_up = {
        dt.date.fromisoformat(day)
        for run in runs
        for day in ((run["stats"] or {}).get("harvest") or {}).get("caught_up") or []
    }
    for run in runs:
        columns = {**run_columns_from_stats(run), "caught_up": run["day"] in caught_up}
        connection.execute(sa.update(new_run).where(new_run.c.id == run["id"]).values(**columns))
    rows = [row for run in runs for row in stage_rows_from_stats(run)]
    if rows:
        connection.execute(sa.insert(run_stage), rows)


def downgrade() -> None:
    connection = op.get_bind()
    stages = [dict(row._mapping) for row in connection.execute(sa.select(run_stage))]
    stats: dict[int, dict[str, Any]] = {}
    for row in stages:
        figures = stats.setdefault(row["run_id"], {"seconds": {}})
        counts = {key: row[column] for key, column in COUNTS[row["stage"]].items() if row[column] is not None}
        figures[row["stage"]] = {**(row["details"] or {}), **counts}
        if row["seconds"] is not None:
            figures["seconds"][row["stage"]] = row["seconds"]
    with op.batch_alter_table("run_stage", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_stage_run_id"))
    op.drop_table("run_stage")
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stats", JSON_VALUE, nullable=False, server_default="{}"))
        batch_op.drop_column("last_harvest_failure")
        batch_op.drop_column("last_harvest_failure_at")
        batch_op.drop_column("harvest_failures")
        batch_op.drop_column("caught_up")
        batch_op.drop_column("failed_stage")
    for run_id, figures in stats.items():
        connection.execute(sa.update(old_run).where(old_run.c.id == run_id).values(stats=figures))
