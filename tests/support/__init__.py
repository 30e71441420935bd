"""Helpers shared by the tests (one module per concern); fixtures stay in the conftest.py files."""
