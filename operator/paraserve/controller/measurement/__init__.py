"""Scraping ranks and turning their metrics into status.measured."""
