"""A training job's parameters, typed: what train_adapter writes into the job's row and the
recipe reads back (once, with TrainJob.read).

They are stored as JSON in the shape they always had, so that the jobs and adapters recorded
before still resume: the dataset's fields flat (dataset_id, dataset_path, dataset_format,
dataset_hash), the base without the fields its kind does not use.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, model_validator

from learning.train.cluster import ClusterTarget
from learning.train.config import TrainConfig


class BaseRef(BaseModel):
    """The base model as the checks resolved it."""

    kind: Literal["embedded", "path", "hub"]
    size: str = ""  # embedded: tiny, small, ...
    ref: str = ""  # path: the folder; hub: the repository id
    revision: str | None = None  # hub: the cached snapshot the checks read
    imported_as: str | None = None  # a base imported from a GGUF: its id, and that file
    gguf: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> BaseRef:
        if self.kind == "embedded" and not self.size:
            raise ValueError("an embedded base needs its size")
        if self.kind != "embedded" and not self.ref:
            raise ValueError(f"a {self.kind} base needs its ref")
        return self

    def stored(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)  # the keys that were given, as before


class DatasetRef(BaseModel):
    """The dataset a run trains on, as check_dataset found it."""

    id: str
    path: str  # the folder holding train.jsonl
    format: str
    content_hash: str


class StartFrom(BaseModel):
    """A trained adapter a run continues, and the LoRA shape it fixes."""

    id: str
    path: str
    rank: int
    alpha: float
    target_modules: list[str] | str


class TrainJob(BaseModel):
    """Everything the recipe needs: the adapter to make, its configuration, base and dataset."""

    adapter_id: str
    role: str
    adapter_dir: str
    config: TrainConfig
    base: BaseRef
    dataset: DatasetRef
    num_processes: int = 1
    start_from: StartFrom | None = None
    cluster: ClusterTarget | None = None  # None: this machine (one process, or accelerate's)

    @classmethod
    def read(cls, params: dict[str, Any]) -> TrainJob:
        """From a job row's params."""
        dataset = DatasetRef(
            id=params["dataset_id"],
            path=params["dataset_path"],
            format=params["dataset_format"],
            content_hash=params["dataset_hash"],
        )
        return cls.model_validate({**params, "dataset": dataset})

    def adapter_params(self) -> dict[str, Any]:
        """The adapter's params in the registry (a resumed run reads its config and start_from)."""
        return {
            "config": self.config.model_dump(),
            "dataset_id": self.dataset.id,
            "base": self.base.stored(),
            "num_processes": self.num_processes,
            **({"start_from": self.start_from.model_dump()} if self.start_from is not None else {}),
            **({"cluster": self.cluster.model_dump()} if self.cluster is not None else {}),
        }

    def params(self) -> dict[str, Any]:
        """The job row's params."""
        return {
            **self.adapter_params(),
            "adapter_id": self.adapter_id,
            "role": self.role,
            "adapter_dir": self.adapter_dir,
            "dataset_path": self.dataset.path,
            "dataset_format": self.dataset.format,
            "dataset_hash": self.dataset.content_hash,
        }
