"""The demo: the whole loop end to end on the embedded model."""
