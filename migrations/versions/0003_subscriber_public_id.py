"""subscriber public id: links name a random ID, never the row ID

Revision ID: 0003_subscriber_public_id
Revises: 0001
Create Date: 2026-11-25
"""
import secrets

import sqlalchemy as sa
from alembic import op

revision = "0003_subscriber_public_id"
# Chained after 0002_run_ledger when both are merged; this migration touches only `subscriber`.
down_revision = "0002_run_ledger"
branch_labels = None
depends_on = None

subscriber = sa.table("subscriber", sa.column("id", sa.Integer), sa.column("public_id", sa.String(32)))


def upgrade() -> None:
    # Added nullable, filled row by row, then made NOT NULL: existing rows need their own random value.
    with op.batch_alter_table("subscriber", schema=None) as batch_op:
        batch_op.add_column(sa.Column("public_id", sa.String(length=32), nullable=True))
    connection = op.get_bind()
    for (row_id,) in connection.execute(sa.select(subscriber.c.id)).all():
        connection.execute(
            subscriber.update().where(subscriber.c.id == row_id).values(public_id=secrets.token_urlsafe(16))
        )
    with op.batch_alter_table("subscriber", schema=None) as batch_op:
        batch_op.alter_column("public_id", existing_type=sa.String(length=32), nullable=False)
        batch_op.create_index(batch_op.f("ix_subscriber_public_id"), ["public_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("subscriber", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subscriber_public_id"))
        batch_op.drop_column("public_id")
