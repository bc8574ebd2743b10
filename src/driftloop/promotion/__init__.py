"""Promotion: the gate (champion vs challenger on the same holdout) and the alias moves."""
