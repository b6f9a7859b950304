"""The demo's summary: figures gathered from its stages, an honest verdict, and a PNG plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from learning.home import subdir
from learning.loop.stages import Stage
from learning.registry.adapters import get_adapter
from learning.store import Store


class DemoSummary(BaseModel):
    home: str
    quick: bool
    base_model: str | None = None
    adapter_id: str | None = None
    dataset_ids: dict[str, str] = Field(default_factory=dict)
    heldout_tasks: int = 0
    base_pass_rate: float | None = Field(
        default=None, description="Held-out tasks whose answer passed every test, base model."
    )
    adapter_pass_rate: float | None = Field(default=None, description="The same for base + adapter.")
    sft_adapter_id: str | None = Field(default=None, description="The SFT adapter GRPO started from (when it ran).")
    sft_pass_rate: float | None = Field(default=None, description="Held-out pass rate of base + the SFT adapter.")
    sft_mean_reward: float | None = None
    margin: float | None = Field(default=None, description="adapter_pass_rate - base_pass_rate.")
    base_mean_reward: float | None = None
    adapter_mean_reward: float | None = None
    by_family: dict[str, dict[str, float]] = Field(default_factory=dict)
    eval_loss_base: float | None = None
    eval_loss_adapter: float | None = None
    gate_passed: bool | None = None
    gate_tested_rows: int = Field(default=0, description="Test-split rows whose tests the gate ran for both models.")
    gate_base_pass_rate_tests: float | None = Field(
        default=None, description="The gate's pass rate from tests on the coder dataset's test split, base model."
    )
    gate_adapter_pass_rate_tests: float | None = Field(default=None, description="The same for base + adapter.")
    gate_interval: list[float] | None = Field(
        default=None, description="The gate's paired interval on the difference (adapter - base)."
    )
    adapter_status: str | None = None
    drift_decision: str | None = None
    adapter_beat_base: bool = False
    verdict: str = ""
    runs_logged: int = 0
    executions: int = Field(default=0, description="Answers whose reward came from running them against hidden tests.")
    seconds: dict[str, float] = Field(default_factory=dict, description="Wall time of each stage.")
    total_seconds: float = 0.0
    plot_path: str | None = None
    summary_path: str | None = None
    stages: list[Stage] = Field(default_factory=list)


def _num(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def loss_curve(adapter_dir: Path) -> list[tuple[float, float]]:
    """(step, training loss) points from the adapter's metadata or its trainer logs."""
    states = sorted(
        adapter_dir.glob("**/checkpoint-*/trainer_state.json"),
        key=lambda p: int(p.parent.name.rsplit("-", 1)[-1]) if p.parent.name.rsplit("-", 1)[-1].isdigit() else 0,
    )
    candidates = [adapter_dir / "metadata.json", *reversed(states)]
    for path in candidates:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for key in ("loss_curve", "log_history", "train_log", "history"):
            rows = data.get(key) if isinstance(data, dict) else None
            if isinstance(rows, list) and rows:
                points = []
                for i, row in enumerate(rows):
                    if isinstance(row, dict) and _num(row.get("loss")) is not None:
                        points.append((_num(row.get("step")) or i + 1, _num(row["loss"])))
                    elif isinstance(row, (list, tuple)) and len(row) == 2:
                        points.append((_num(row[0]) or i + 1, _num(row[1])))
                if points:
                    return points
    return []


def verdict(base: float | None, adapter: float | None, n: int) -> tuple[bool, str]:
    if base is None or adapter is None:
        return False, "No comparison: the held-out stage did not run, so nothing can be said about the adapter."
    margin = adapter - base
    if margin > 0:
        return True, (
            f"The adapter beat the base on {n} held-out tasks: pass rate {adapter:.2f} vs {base:.2f} "
            f"(+{margin:.2f}, {round(margin * n)} more tasks solved)."
        )
    if margin == 0:
        return False, (f"The adapter did NOT beat the base on {n} held-out tasks: both pass {adapter:.2f}.")
    return False, (
        f"The adapter did NOT beat the base on {n} held-out tasks: pass rate {adapter:.2f} vs "
        f"{base:.2f} ({margin:+.2f})."
    )


def plot(path: Path, curve: list[tuple[float, float]], held: dict, population: dict) -> Path | None:
    """Left: the adapter's training loss. Right: held-out pass rate and mean reward by model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if curve:
        ax1.plot([p[0] for p in curve], [p[1] for p in curve], color="tab:blue")
    else:
        ax1.text(0.5, 0.5, "no training log", ha="center", va="center", transform=ax1.transAxes)
    ax1.set(title="adapter training loss", xlabel="step", ylabel="loss")
    bars = [("base (held-out)", held.get("base")), ("SFT (held-out)", held.get("sft"))]
    bars += [("adapter (held-out)", held.get("adapter"))]
    bars += [(f"{src} (train)", v) for src, v in population.items()]
    bars = [(name, v) for name, v in bars if v]
    xs = range(len(bars))
    ax2.bar([x - 0.2 for x in xs], [v["pass_rate"] for _, v in bars], width=0.4, label="pass rate")
    ax2.bar([x + 0.2 for x in xs], [v["mean_reward"] for _, v in bars], width=0.4, label="mean reward")
    ax2.set_xticks(list(xs), [name for name, _ in bars], rotation=20, ha="right", fontsize=8)
    ax2.set(title="reward by model (from executing the answers)", ylim=(0, 1.05))
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def finish_summary(store: Store, cfg, state: dict, stages: list[Stage], quick: bool) -> DemoSummary:
    out = subdir(store.home, "demo")
    held = state.get("heldout") or {}
    base, adapter = held.get("base"), held.get("adapter")
    s = DemoSummary(
        home=str(store.home),
        quick=quick,
        base_model=state.get("base"),
        adapter_id=state.get("adapter_id"),
        dataset_ids=state.get("datasets", {}),
        executions=state.get("executions", 0),
        stages=stages,
        seconds={st.name: st.seconds for st in stages},
    )
    s.runs_logged = sum(st.detail.get("runs_logged", 0) for st in stages if isinstance(st.detail, dict))
    if base and adapter:
        s.heldout_tasks = base["n"]
        s.base_pass_rate, s.adapter_pass_rate = base["pass_rate"], adapter["pass_rate"]
        s.base_mean_reward, s.adapter_mean_reward = base["mean_reward"], adapter["mean_reward"]
        s.margin = round(adapter["pass_rate"] - base["pass_rate"], 4)
        s.by_family = held.get("by_family", {})
    if held.get("sft"):
        s.sft_adapter_id = state.get("sft_adapter_id")
        s.sft_pass_rate, s.sft_mean_reward = held["sft"]["pass_rate"], held["sft"]["mean_reward"]
    s.adapter_beat_base, s.verdict = verdict(s.base_pass_rate, s.adapter_pass_rate, s.heldout_tasks)
    ev = state.get("eval") or {}
    s.eval_loss_base, s.eval_loss_adapter = _num(ev.get("base_eval_loss")), _num(ev.get("eval_loss"))
    s.gate_passed = ev.get("gate_passed")
    s.gate_tested_rows = ev.get("tested_rows") or 0
    s.gate_base_pass_rate_tests, s.gate_adapter_pass_rate_tests = (
        ev.get("base_pass_rate_tests"),
        ev.get("pass_rate_tests"),
    )
    s.gate_interval = ev.get("tests_difference_interval")
    s.drift_decision = state.get("drift")
    if s.adapter_id:
        s.adapter_status = get_adapter(store, s.adapter_id).status
    population = next((st.detail.get("by_source", {}) for st in stages if st.name == "population"), {})
    trained = state.get("sft_adapter_id") or s.adapter_id  # the SFT loss: GRPO's is no learning curve
    curve = loss_curve(Path(get_adapter(store, trained).path)) if trained else []
    try:
        s.plot_path = str(plot(out / "demo.png", curve, held, population))
    except Exception as exc:  # a plot must never cost the figures
        s.plot_path = None
        s.verdict += f" (plot failed: {exc})"
    s.summary_path = str(out / "summary.json")
    return s
