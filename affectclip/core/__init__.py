"""The floor every other package stands on: error types, device and process-group helpers, seeding, atomic
writes and confined paths. It imports nothing else from affectclip, and everything may import it."""
