"""Messages in order of their time: an index on (session_id, created_at, pk), in place of the one on session_id.

A reply's row is inserted when it ends, so insertion order (``pk``) puts a message sent while it ran before it;
the turn's time keeps the order the conversation had. The new index serves the session's lookups the old one did.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_messages_session_id_created_at", "messages", ["session_id", "created_at", "pk"])
    op.drop_index("ix_messages_session_id", table_name="messages")


def downgrade() -> None:
    op.create_index("ix_messages_session_id", "messages", ["session_id"])
    op.drop_index("ix_messages_session_id_created_at", table_name="messages")
