"""harvest completeness: feed tallies and gaps, feed validators, operator alerts, run latency stamps

Revision ID: 0008_harvest_completeness
Revises: 0004_translation_rejections
Create Date: 2026-12-02
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0008_harvest_completeness"
down_revision = "0007_paper_feedback"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("run", sa.Column("feed_seen_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    op.add_column("run", sa.Column("last_accepted_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    op.create_table(
        "harvest_tally",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("announced_new", sa.Integer(), nullable=False),
        sa.Column("announced_cross", sa.Integer(), nullable=False),
        sa.Column("announced_replace", sa.Integer(), nullable=False),
        sa.Column("stored", sa.Integer(), nullable=False),
        sa.Column("replace_not_held", sa.Integer(), nullable=False),
        sa.Column("details_skipped", sa.Integer(), nullable=False),
        sa.Column("recorded_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("day"),
    )
    op.create_table(
        "feed_category_count",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("category", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("announce_type", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day", "category", "announce_type"),
    )
    op.create_table(
        "harvest_gap",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("subject", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.PrimaryKeyConstraint("day", "kind", "subject"),
    )
    op.create_table(
        "feed_validator",
        sa.Column("url", sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=False),
        sa.Column("etag", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
        sa.Column("last_modified", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("day", sa.Date(), nullable=True),
        sa.Column("fetched_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("changed_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("url"),
    )
    op.create_table(
        "admin_alert",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("cause", sa.String(length=24), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("raised_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("mailed_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("mail_attempts", sa.Integer(), nullable=False),
        sa.Column("mail_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("day", "cause"),
    )


def downgrade() -> None:
    op.drop_table("admin_alert")
    op.drop_table("feed_validator")
    op.drop_table("harvest_gap")
    op.drop_table("feed_category_count")
    op.drop_table("harvest_tally")
    op.drop_column("run", "last_accepted_at")
    op.drop_column("run", "feed_seen_at")
