"""paper feedback and ranked sections: a subscriber's verdicts on papers, and the rank signals of a selection

Revision ID: 0007_paper_feedback
Revises: 0004_translation_rejections
Create Date: 2026-12-02
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0007_paper_feedback"
# The integrator re-chains this after the other migrations of the round; it touches no table they add.
down_revision = "0006_digest_frequency"
branch_labels = None
depends_on = None

RANK_COLUMNS = ("title_hit", "distinct_terms", "announce_position", "feedback_score", "feedback_band")


def upgrade() -> None:
    op.create_table(
        "paper_feedback",
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("arxiv_id", sa.String(length=40), nullable=False),
        sa.Column("verdict", sa.String(length=8), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscriber.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["arxiv_id"], ["paper.arxiv_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("subscriber_id", "arxiv_id"),
    )
    # Existing selections keep the old order (keyword, then arXiv ID): every signal starts equal.
    with op.batch_alter_table("selection") as batch:
        batch.add_column(sa.Column("title_hit", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("distinct_terms", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("announce_position", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("feedback_score", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("feedback_band", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("selection") as batch:
        for name in RANK_COLUMNS:
            batch.drop_column(name)
    op.drop_table("paper_feedback")
