"""Alembic environment: always run in-process on the connection moe-tui opened."""

from alembic import context
from sqlmodel import SQLModel

import app.store.models  # noqa: F401  (registers the tables on SQLModel.metadata)

connection = context.config.attributes["connection"]
# render_as_batch: SQLite cannot ALTER most things, so Alembic rebuilds the table.
context.configure(connection=connection, target_metadata=SQLModel.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
