"""Memory: summary history (traceable per turn) and per-viewer long-term facts.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "summaries",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column(
            "session_id", sa.String(64), sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("covers_until_turn_id", sa.String(64), nullable=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_index("ix_summaries_session_id", "summaries", ["session_id"])
    op.create_table(
        "viewer_facts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("fact", sa.Text, nullable=False),
        sa.Column("normalized", sa.String(200), nullable=False),
        sa.Column("embedding", sa.Text, nullable=True),
        sa.Column("session_id", sa.String(64), nullable=True),
        sa.Column("turn_id", sa.String(64), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.UniqueConstraint("platform", "user_id", "normalized", name="uq_viewer_facts_fact"),
    )
    op.create_index("ix_viewer_facts_created_at", "viewer_facts", ["created_at"])
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("summary_id", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("summary_id")
    op.drop_table("viewer_facts")
    op.drop_table("summaries")
