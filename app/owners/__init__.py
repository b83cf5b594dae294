"""Owners: where a data owner's samples are or were."""
