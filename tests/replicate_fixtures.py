"""Pytest fixtures for the fake Replicate server (filled in with the Replicate backend)."""
