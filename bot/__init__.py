"""The Discord side of Ta-da: composition root (:mod:`bot.app`), config, the encrypted
store, the typed Ta-da client (:mod:`bot.tada`), the embedded engine and error handling.
Cogs (``cogs/``) stay thin and call the services built here."""
