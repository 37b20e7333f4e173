"""Pytest fixtures for tiny random-weight diffusers models (filled in with the local backend)."""
