"""The loop as one job: curate, train, evaluate, promote."""
