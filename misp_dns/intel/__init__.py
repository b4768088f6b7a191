"""Threat intelligence in: fetching indicators from MISP, normalising and storing them."""
