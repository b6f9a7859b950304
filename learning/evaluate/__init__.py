"""Evaluation: the sandbox, per-role checks, the coding environment, the gate."""
