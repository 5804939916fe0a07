"""Queue: GPU requests and slot assignments, sweeps, cancel requests, Slurm ids, dependencies.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("run") as b:
        b.add_column(sa.Column("group_id", sa.String(), nullable=True))
        b.add_column(sa.Column("gpus", sa.Integer(), nullable=False, server_default="0"))
        b.add_column(sa.Column("slots", sa.String(), nullable=True))
        b.add_column(sa.Column("cancel_requested_at", sa.Float(), nullable=True))
        b.add_column(sa.Column("slurm_job_id", sa.String(), nullable=True))
        b.add_column(sa.Column("retry_of", sa.String(), nullable=True))
        b.add_column(sa.Column("hook", sa.String(), nullable=True))
        b.create_index("ix_run_group_id", ["group_id"])

    op.create_table(
        "run_dependency",
        sa.Column("run", sa.Integer(), sa.ForeignKey("run.id", ondelete="CASCADE"), primary_key=True, nullable=False),
        sa.Column("parent", sa.Integer(), sa.ForeignKey("run.id", ondelete="CASCADE"), primary_key=True, nullable=False),
    )
    op.create_index("ix_run_dependency_parent", "run_dependency", ["parent"])


def downgrade() -> None:
    op.drop_index("ix_run_dependency_parent", table_name="run_dependency")
    op.drop_table("run_dependency")
    with op.batch_alter_table("run") as b:
        b.drop_index("ix_run_group_id")
        for col in ("hook", "retry_of", "slurm_job_id", "cancel_requested_at", "slots", "gpus", "group_id"):
            b.drop_column(col)
