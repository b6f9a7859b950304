"""Curation: runs into datasets (redaction, templates, row formats, the split writer)."""
