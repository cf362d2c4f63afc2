"""subscription generation and pending changes: links void after an unsubscribe; form changes wait for a confirmation

Revision ID: 0005_subscription_generation
Revises: 0004_translation_rejections
Create Date: 2026-12-02
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0005_subscription_generation"
down_revision = "0004_translation_rejections"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscriber", schema=None) as batch_op:
        batch_op.add_column(sa.Column("generation", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("pending_language", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True))
        batch_op.add_column(sa.Column("pending_timezone", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
    op.create_table(
        "pending_keyword",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("expression", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscriber.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("subscriber_id", "position"),
    )
    with op.batch_alter_table("pending_keyword", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pending_keyword_subscriber_id"), ["subscriber_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("pending_keyword", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pending_keyword_subscriber_id"))
    op.drop_table("pending_keyword")
    with op.batch_alter_table("subscriber", schema=None) as batch_op:
        batch_op.drop_column("pending_timezone")
        batch_op.drop_column("pending_language")
        batch_op.drop_column("generation")
