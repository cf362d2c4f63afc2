"""translation rejections: unusable DeepL replies, recorded so no run buys them again

Revision ID: 0004_translation_rejections
Revises: 0001
Create Date: 2026-11-26
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004_translation_rejections"
# The integrator chains this after 0002/0003; it touches no table they add.
down_revision = "0003_subscriber_public_id"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "translation_rejection",
        sa.Column("arxiv_id", sa.String(length=40), nullable=False),
        sa.Column("language", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("fallback", sa.Text(), nullable=False),
        sa.Column("billed_characters", sa.Integer(), nullable=False),
        sa.Column("rejected_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["arxiv_id"], ["paper.arxiv_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("arxiv_id", "language"),
    )


def downgrade() -> None:
    op.drop_table("translation_rejection")
