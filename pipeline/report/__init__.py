"""Reporting: statistics, the CV report and comparisons, pictures and HTML, blends. Needs no torch."""
