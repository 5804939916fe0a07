"""Baseline: runs, metrics, metric summaries, ingest offsets.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _run_fk(primary_key: bool = False) -> sa.Column:
    return sa.Column("run", sa.Integer(), sa.ForeignKey("run.id", ondelete="CASCADE"), primary_key=primary_key, nullable=False)


def upgrade() -> None:
    op.create_table(
        "run",
        sa.Column("id", sa.Integer(), primary_key=True, nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("backend", sa.String(), nullable=False),
        sa.Column("config", sa.String(), nullable=False),
        sa.Column("argv", sa.String(), nullable=False),
        sa.Column("command", sa.String(), nullable=False),
        sa.Column("run_dir", sa.String(), nullable=False),
        sa.Column("git_commit", sa.String(), nullable=True),
        sa.Column("git_dirty", sa.Boolean(), nullable=True),
        sa.Column("host", sa.String(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("launcher_pid", sa.Integer(), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("total_epochs", sa.Integer(), nullable=True),
        sa.Column("primary_metric", sa.String(), nullable=True),
        sa.Column("tags", sa.String(), nullable=False),
        sa.Column("notes", sa.String(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("pipeline_id", sa.String(), nullable=True),
        sa.Column("rev", sa.Integer(), nullable=False),
    )
    op.create_index("ix_run_run_id", "run", ["run_id"], unique=True)
    op.create_index("ix_run_kind", "run", ["kind"])
    op.create_index("ix_run_status", "run", ["status"])
    op.create_index("ix_run_rev", "run", ["rev"])

    op.create_table(
        "metric",
        sa.Column("id", sa.Integer(), primary_key=True, nullable=False),
        _run_fk(),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("time", sa.Float(), nullable=False),
    )
    op.create_index("ix_metric_run_key_epoch", "metric", ["run", "key", "epoch"])

    op.create_table(
        "metric_summary",
        _run_fk(primary_key=True),
        sa.Column("key", sa.String(), primary_key=True, nullable=False),
        sa.Column("goal", sa.String(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("last", sa.Float(), nullable=True),
        sa.Column("last_epoch", sa.Integer(), nullable=True),
        sa.Column("min", sa.Float(), nullable=True),
        sa.Column("max", sa.Float(), nullable=True),
        sa.Column("best", sa.Float(), nullable=True),
        sa.Column("best_epoch", sa.Integer(), nullable=True),
    )

    op.create_table(
        "ingest_state",
        _run_fk(primary_key=True),
        sa.Column("events_offset", sa.Integer(), nullable=False),
        sa.Column("events_lines", sa.Integer(), nullable=False),
        sa.Column("signature", sa.String(), nullable=False),
        sa.Column("warning", sa.String(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("ingest_state")
    op.drop_table("metric_summary")
    op.drop_index("ix_metric_run_key_epoch", table_name="metric")
    op.drop_table("metric")
    op.drop_index("ix_run_rev", table_name="run")
    op.drop_index("ix_run_status", table_name="run")
    op.drop_index("ix_run_kind", table_name="run")
    op.drop_index("ix_run_run_id", table_name="run")
    op.drop_table("run")
