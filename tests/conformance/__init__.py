"""Contract conformance: our OpenAPI against upstream's three revisions, and schemathesis."""
