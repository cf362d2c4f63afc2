"""selection by subscriber: an index on (subscriber_id, day) for composing a batch of digests

Reading a batch's selections (and deleting a subscriber, whose selections cascade) looked at every
selection row: the primary key starts with the day.

Revision ID: 0009_selection_by_subscriber
Revises: 0008_harvest_completeness
Create Date: 2026-12-03
"""
from alembic import op

revision = "0009_selection_by_subscriber"
down_revision = "0008_harvest_completeness"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_selection_subscriber_day", "selection", ["subscriber_id", "day"])


def downgrade() -> None:
    op.drop_index("ix_selection_subscriber_day", table_name="selection")
