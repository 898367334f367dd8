"""Prefect flows composing the ddflow stages, and the ``ddflow`` command-line interface."""
