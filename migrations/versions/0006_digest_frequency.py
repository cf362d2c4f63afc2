"""digest frequency: weekly digests, the empty-day note, updates to papers sent; deliveries keyed by period

Revision ID: 0006_digest_frequency
Revises: 0004_translation_rejections
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0006_digest_frequency"
# The integrator re-chains this after the migrations merged before it.
down_revision = "0005_subscription_generation"
branch_labels = None
depends_on = None

# The unnamed UNIQUE (subscriber_id, day) of 0001, named so SQLite's table copy can drop it.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_N_name)s"}


def _old_unique_name() -> str:
    if op.get_bind().dialect.name == "postgresql":
        return "delivery_subscriber_id_day_key"
    return "uq_delivery_subscriber_id_day"


def upgrade() -> None:
    # Plain ADD COLUMN, never a table copy: on SQLite, copying `subscriber` would drop the old table and,
    # with foreign keys on, cascade the delete to every subscriber's keywords, selections and sent papers.
    op.add_column("subscriber", sa.Column("frequency", sa.String(length=8), nullable=False, server_default="daily"))
    op.add_column("subscriber", sa.Column("weekday", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("subscriber", sa.Column("empty_day_note", sa.Boolean(), nullable=False, server_default="0"))
    op.add_column("subscriber", sa.Column("updates", sa.Boolean(), nullable=False, server_default="1"))

    # Every delivery so far was a daily digest: its period is its day.
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.add_column(sa.Column("period", sa.Date(), nullable=True))
    op.execute("UPDATE delivery SET period = day")
    with op.batch_alter_table("delivery", schema=None, naming_convention=NAMING) as batch_op:
        batch_op.alter_column("period", existing_type=sa.Date(), nullable=False)
        batch_op.drop_constraint(_old_unique_name(), type_="unique")
        batch_op.create_unique_constraint("uq_delivery_subscriber_period", ["subscriber_id", "period"])
        batch_op.create_index(batch_op.f("ix_delivery_period"), ["period"], unique=False)

    # What each subscriber was shown of a paper sent before: the paper as stored now, so no old
    # paper comes back as "updated" after the upgrade.
    op.add_column("sent_paper", sa.Column("version", sa.Integer(), nullable=True))
    op.add_column("sent_paper", sa.Column("journal_ref", sa.Text(), nullable=True))
    op.add_column("sent_paper", sa.Column("doi", sa.String(length=200), nullable=True))
    op.create_index("ix_sent_paper_day", "sent_paper", ["day"], unique=False)
    op.execute(
        "UPDATE sent_paper SET "
        "version = (SELECT paper.version FROM paper WHERE paper.arxiv_id = sent_paper.arxiv_id), "
        "journal_ref = (SELECT paper.journal_ref FROM paper WHERE paper.arxiv_id = sent_paper.arxiv_id), "
        "doi = (SELECT paper.doi FROM paper WHERE paper.arxiv_id = sent_paper.arxiv_id)"
    )


def downgrade() -> None:
    # Plain DROP COLUMN (SQLite 3.35+) for the same reason as above: no copy of a table others refer to.
    op.drop_index("ix_sent_paper_day", table_name="sent_paper")
    for column in ("doi", "journal_ref", "version"):
        op.drop_column("sent_paper", column)
    # A weekly digest sent on another day than its period keeps its day; two rows on one day keep the first.
    op.execute(
        "DELETE FROM delivery WHERE id NOT IN (SELECT MIN(id) FROM delivery GROUP BY subscriber_id, day)"
    )
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_delivery_period"))
        batch_op.drop_constraint("uq_delivery_subscriber_period", type_="unique")
        batch_op.create_unique_constraint(_old_unique_name(), ["subscriber_id", "day"])
        batch_op.drop_column("period")
    for column in ("updates", "empty_day_note", "weekday", "frequency"):
        op.drop_column("subscriber", column)
