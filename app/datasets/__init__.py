"""Datasets: the engine's ledger holds the samples, the database a row per dataset."""
