"""Registers every zoo model (filled in by the zoo issue)."""
