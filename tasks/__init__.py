"""Prefect tasks, one per pipeline stage. Tasks exchange artifact references, never tensors."""
