"""Models and their immutable versions."""
