"""Deletion requests: intake, status, per-model outcomes."""
