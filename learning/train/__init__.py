"""Training: configuration, the checks and launch, the recipe that runs in the job."""
