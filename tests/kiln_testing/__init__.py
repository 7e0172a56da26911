"""Helpers shared by kiln's tests (on sys.path through pytest's ``pythonpath``)."""
