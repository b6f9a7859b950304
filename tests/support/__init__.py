"""Helpers the tests (and bench/) share: tiny models, servers, corpora, checks. No tests here."""
