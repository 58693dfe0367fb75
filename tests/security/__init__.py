"""Security: object-level authorization, signed URLs, hostile input, secrets kept out of logs."""
