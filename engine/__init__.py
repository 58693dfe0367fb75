"""The Ta-da engine: our self-hostable implementation of the Ta-da HTTP API.

It never imports discord. ``create_app(settings)`` builds the FastAPI app;
``tada-engine serve`` runs it, ``tada-engine worker`` runs a separate job consumer.
"""
