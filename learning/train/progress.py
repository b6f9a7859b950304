"""The trainer callback of the training recipe: progress to the job row, and a cancel that
checkpoints and stops every process of a run at the same step."""

from __future__ import annotations

import time

from learning.jobs.manage import JobContext

CURVE_POINTS = 200  # a curve in the job's progress keeps at most this many points


class Curve:
    """A value by step for the job's progress (the dashboard draws it while the job runs): every
    `every`-th point is kept, and past CURVE_POINTS every other one goes and `every` doubles, so the
    curve keeps its whole span at an even density."""

    def __init__(self) -> None:
        self.points: list[list[float]] = []
        self.every, self.seen = 1, 0

    def add(self, step: int, value: float) -> list[list[float]]:
        if self.seen % self.every == 0:
            self.points.append([step, value])
            if len(self.points) > CURVE_POINTS:
                self.points, self.every = self.points[::2], self.every * 2
        self.seen += 1
        return self.points


def trainer_callback_base():
    """transformers' TrainerCallback, imported when a callback class is defined (in the job process)."""
    from transformers import TrainerCallback

    return TrainerCallback


class ProgressCallback(trainer_callback_base()):
    """Writes step, total_steps, loss (and its curve), steps_per_s, tokens_per_s and eta_s to the
    job row; stops on cancel.

    On a cancel request the trainer saves a checkpoint at the current step and stops; every
    process of a distributed run learns of it at the same step (broadcast from rank 0).
    """

    def __init__(self, ctx: JobContext, rank0: bool):
        self.ctx, self.rank0 = ctx, rank0
        self.cancelled_at: int | None = None
        self.tokens_per_s: float | None = None
        self._t0: float | None = None
        self._tokens0: int | None = None
        self._step0: int | None = None
        self._loss: float | None = None
        self.loss_curve = Curve()

    def on_train_begin(self, args, state, control, **kw):
        self._t0, self._tokens0, self._step0 = time.time(), state.num_input_tokens_seen or 0, state.global_step
        if self.rank0:
            self.ctx.progress(force=True, stage="train", step=state.global_step, total_steps=state.max_steps)

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self._loss = round(float(logs["loss"]), 5)
            self.loss_curve.add(state.global_step, self._loss)

    def on_step_end(self, args, state, control, **kw):
        assert self._t0 is not None and self._tokens0 is not None and self._step0 is not None  # on_train_begin
        elapsed = max(1e-9, time.time() - self._t0)
        done = state.global_step - self._step0
        tokens = (state.num_input_tokens_seen or 0) - self._tokens0
        self.tokens_per_s = round(tokens / elapsed, 1) if tokens else None
        if self.rank0:
            eta = (state.max_steps - state.global_step) * elapsed / done if done else None
            self.ctx.progress(
                step=state.global_step,
                total_steps=state.max_steps,
                loss=self._loss,
                loss_curve=self.loss_curve.points,
                steps_per_s=round(done / elapsed, 3),
                tokens_per_s=self.tokens_per_s,
                eta_s=round(eta, 1) if eta is not None else None,
                tokens_seen=int(state.num_input_tokens_seen or 0),
            )
        if self._cancel_requested() and state.global_step < state.max_steps:
            self.cancelled_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control

    def _cancel_requested(self) -> bool:
        import torch
        import torch.distributed as dist

        flag = self.rank0 and self.ctx.cancelled()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            t = torch.tensor([1 if flag else 0])
            dist.broadcast(t, 0)
            flag = bool(t.item())
        return flag
