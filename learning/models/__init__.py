"""Models: the embedded base, its corpus, loading and generation."""
