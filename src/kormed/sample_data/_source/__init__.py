"""Authored sources of the bundled sample data (original text written for kormed)."""
