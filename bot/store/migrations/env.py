"""Alembic environment of the bot store; runs on the connection handed in by ``Store.migrate``."""

from alembic import context

from bot.store.models import Base

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,
    # Its own version table: the bot's and the engine's migrations may share one database.
    version_table="bot_alembic_version",
)
with context.begin_transaction():
    context.run_migrations()
