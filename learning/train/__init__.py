"""Training: configuration, the checks and launch, the recipe that runs in the job."""

from learning.jobs.manage import on_job_failure
from learning.registry.adapters import fail_training


def _training_died(store, job_id: str, adapter_id: str) -> None:
    fail_training(store, adapter_id, f"training job {job_id} died before finishing")


on_job_failure("train", _training_died)
