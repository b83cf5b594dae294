"""Deletion certificates: signed statements of what was erased, replaced and verified."""
