"""Evaluation: image metrics, report tables and figures."""
