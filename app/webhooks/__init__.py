"""Webhooks: subscribers, signed deliveries through an outbox, and the sender."""
