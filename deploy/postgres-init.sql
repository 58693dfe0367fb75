-- The bot's store: a database of its own beside the engine's (same server, same role).
CREATE DATABASE tada_bot OWNER tada;
