"""Tidy results: the one long table every run produces, its files, derived tables, plots."""
