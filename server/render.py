"""The CLI's screenfuls: one function per kind of result. `--json` prints the result instead.

Any value not written here (a task key, an id, an error, a path) may hold `[/x]` or `[bold red]`:
it goes into our markup and tables through `esc`/`esc_fmt`/`styled` (server/terminal.py), or
the whole line is printed with `markup=False` when it carries no markup of ours.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from server.terminal import console, esc, esc_fmt, fmt, styled


def logged(r: Any) -> None:
    console.print(f"logged run {styled(r.run_id)} (task_key {esc(r.task_key)})")
    if r.reward_token is not None:
        console.print(
            f"pending; its reward token (shown once): {r.reward_token}", highlight=False, soft_wrap=True, markup=False
        )


def rewarded(r: Any) -> None:
    was = "was pending" if r.previous_reward is None else f"corrected from {fmt(r.previous_reward)}"
    console.print(f"run {styled(r.run_id)} scored {fmt(r.reward)} ({was}; role {esc(r.role)})", highlight=False)
    if len(r.history) > 1 or r.previous_reward is not None:
        for e in r.history:
            before = "pending" if e.previous is None else fmt(e.previous)
            why = f": {e.reason}" if e.reason else ""
            line = f"  {e.time}  {e.kind} {before} -> {fmt(e.reward)} by {e.actor}{why}"
            console.print(line, highlight=False, soft_wrap=True, markup=False)


def code_score(r: Any) -> None:
    color = "green" if r.total and r.passed == r.total else "red"
    console.print(
        f"[{color}]{r.passed}/{r.total}[/] tests passed"
        + ("" if r.compiled else " (the code does not compile)")
        + (" (timed out)" if r.timed_out else "")
        + f" in {r.duration_s:.3f}s, sandbox {esc(r.sandbox)}, verdict {esc(r.isolation)}",
        highlight=False,
    )
    for i, (error, mode) in enumerate(zip(r.errors, r.modes)):
        label = " (in-process: the code could forge this one)" if mode == "in-process" else ""
        if error is not None or label:
            # the error is the code's own text: printed as it is, never read as markup
            console.print(f"  test {i + 1}: {error or 'passed'}{label}", highlight=False, markup=False)
    if r.run_id is not None:
        console.print(f"logged run {styled(r.run_id)} (reward {fmt(r.score)}, task_key {esc(r.task_key)})")


def imported(r: Any) -> None:
    console.print(
        f"imported [bold]{r.imported}[/] runs from {r.lines} lines in {r.seconds:.2f}s"
        + (f", skipped {r.skipped} bad lines" if r.skipped else "")
    )
    for e in r.errors[:10]:
        console.print(f"  line {e.line}: {e.error}", highlight=False, markup=False)


def run_stats(r: Any) -> None:
    title = f"{r.total_runs} runs" + (f", {r.pending} pending (not scored yet)" if r.pending else "")
    table = Table(title=title)
    for col in (
        "role",
        "adapter",
        "runs",
        "pending",
        "mean reward",
        "compile rate",
        "test pass rate",
        "mean iterations",
        "last run",
    ):
        table.add_column(col)
    for g in r.groups:
        table.add_row(
            esc_fmt(g.role),
            esc_fmt(g.adapter_id or ("base" if "adapter_id" in r.group_by else None)),
            esc(g.runs),
            esc(g.pending),
            esc_fmt(g.mean_reward),
            esc_fmt(g.compile_rate),
            esc_fmt(g.test_pass_rate),
            esc_fmt(g.mean_iterations, 1),
            esc_fmt(g.last_time),
        )
    console.print(table)


def job_status(s: Any) -> None:
    color = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(s.status, "cyan")
    console.print(
        f"job {styled(s.job_id)} ({esc(s.kind)}) {styled(s.status, color)}"
        + (f" subject {esc(s.subject)}" if s.subject else "")
        + (f" in {esc(s.elapsed_s)}s" if s.elapsed_s else "")
    )
    if s.progress:
        console.print(
            "  progress: " + ", ".join(f"{k}={fmt(v)}" for k, v in s.progress.items()), highlight=False, markup=False
        )
    if s.error:
        console.print(f"  [red]error:[/] {esc(s.error)}", highlight=False)
    if s.result:
        console.print(
            "  result: " + ", ".join(f"{k}={fmt(v)}" for k, v in s.result.items() if not isinstance(v, (dict, list))),
            highlight=False,
            markup=False,
        )
    console.print(f"  log: {s.log_path}", highlight=False, markup=False)


def job_list(rows: list) -> None:
    table = Table(title="jobs")
    for col in ("id", "kind", "status", "subject", "created", "elapsed s", "step", "error"):
        table.add_column(col)
    for j in rows:
        table.add_row(
            esc(j.job_id),
            esc(j.kind),
            esc(j.status),
            esc_fmt(j.subject),
            esc(j.created),
            esc_fmt(j.elapsed_s),
            esc_fmt(j.progress.get("step")),
            esc((j.error or "")[:60]),
        )
    console.print(table)


def curation(r: Any) -> None:
    if r.dry_run:
        table = Table(title=f"dry run: {esc(r.kind)} dataset for role {esc(r.role)} (nothing written)")
        table.add_column("filter")
        table.add_column("value")
        table.add_column("runs left", justify="right")
        for step in r.funnel:
            table.add_row(esc(step.step), esc_fmt(step.value), esc(step.runs_left))
        console.print(table)
    else:
        console.print(f"dataset {styled(r.dataset_id)} written to {esc(r.path)}")
    counts = ", ".join(f"{k} {v}" for k, v in r.counts.items())
    redaction = ", ".join(f"{k} {v}" for k, v in sorted(r.redaction_counts.items())) or "nothing found"
    console.print(
        f"{r.train_rows} train / {r.test_rows} test rows ({r.format}); mean reward {fmt(r.mean_reward)}; {counts}",
        highlight=False,
        markup=False,
    )
    console.print(
        f"redaction: {redaction}" if r.redacted else "redaction: OFF (--no-redact)", highlight=False, markup=False
    )


def datasets(r: Any) -> None:
    table = Table(title=f"{len(r.datasets)} datasets")
    for col in ("id", "kind", "format", "train", "test", "mean reward", "redacted", "created"):
        table.add_column(col)
    for d in r.datasets:
        red = d.metadata.get("redaction", {})
        table.add_row(
            esc(d.id),
            esc(d.kind),
            esc(d.format),
            esc(d.train_rows),
            esc(d.test_rows),
            esc_fmt(d.metadata.get("mean_reward")),
            esc(sum(red.get("counts", {}).values())) if red.get("enabled") else "off",
            esc(d.created),
        )
    console.print(table)


def train_started(s: Any) -> None:
    p = s.plan
    head = "plan (dry run)" if s.dry_run else f"job {styled(s.job_id)} started"
    console.print(
        f"{head}: adapter {styled(s.adapter_id)}, {esc(p.method)} on {esc(p.dataset_id)} ({p.train_rows} rows), "
        f"base {esc(p.base_model)}",
        highlight=False,
    )
    c = p.config
    console.print(
        f"  r={c['rank']} alpha={c['alpha']} lr={c['learning_rate']} batch={c['batch_size']}x{c['grad_accum']} "
        f"steps={p.steps} tokens~{p.tokens_estimate:,} time~{fmt(p.est_time_s, 0)}s "
        f"memory~{fmt(p.est_memory_mb, 0)}MiB processes={p.num_processes} quantize={c['quantize']}",
        highlight=False,
        markup=False,
    )
    targets = p.target_modules if isinstance(p.target_modules, str) else ", ".join(p.target_modules)
    console.print(f"  adapts: {targets}; exports to: {', '.join(p.export_formats)}", highlight=False, markup=False)
    for note in p.notes:
        console.print(f"  note: {note}", highlight=False, markup=False)
    if not s.dry_run:
        console.print(f"  follow it: learnloop jobs {s.job_id} --wait", highlight=False, markup=False)


def eval_started(r: Any) -> None:
    console.print(
        f"evaluation job {styled(r.job_id)} started for {esc(r.adapter_id)} on {esc(r.dataset_id)} "
        f"({r.test_rows} test rows); follow it with: learnloop jobs {esc(r.job_id)} --wait",
        highlight=False,
    )


def lifecycle_outcome(result: Any) -> None:
    if result.outcome != "done":
        console.print(f"{styled(result.outcome, 'yellow')}: nothing changed.")
        return
    if result.promoted:
        p = result.promoted
        console.print(
            f"{styled(p.adapter.adapter_id, 'green')} {esc(p.from_status)} -> {esc(p.to_status)}"
            + (f"; replaced {esc(p.replaced.adapter_id)} (now archived)" if p.replaced else ""),
            highlight=False,
        )
    if result.rolled_back:
        r = result.rolled_back
        console.print(
            f"{styled(r.restored.adapter_id, 'green')} back in production"
            + (f"; {esc(r.archived.adapter_id)} archived" if r.archived else ""),
            highlight=False,
        )


def base_imported(b: Any) -> None:
    if b.status == "succeeded":
        console.print(
            f"base {styled(b.base_id)} imported from {esc(b.gguf_path)} into {esc(b.folder)}; "
            f"train on it with: learnloop train --base {esc(b.base_id)} ...",
            highlight=False,
        )
    else:
        console.print(
            f"import job {styled(b.job_id)} {esc(b.status)}"
            + (f": {esc(b.error)}" if b.error else f"; follow it with: learnloop jobs {esc(b.job_id)} --wait"),
            highlight=False,
        )


def registered(a: Any) -> None:
    console.print(
        f"registered {styled(a.id)} ({esc(a.role)}, base {esc(a.base_model)}) as trained; "
        f"evaluate it with: learnloop eval {esc(a.id)}",
        highlight=False,
    )


def adapters(rows: list) -> None:
    table = Table(title="adapters (* = production)")
    for col in ("", "id", "role", "status", "created", "base", "dataset", "eval loss", "pass rate"):
        table.add_column(col, no_wrap=col in ("id", "status", "eval loss", "pass rate"))
    for a in rows:
        m = a.metrics or {}
        route = "/".join(x for x in (a.role, a.task_type, a.complexity) if x)
        table.add_row(
            "*" if a.status == "production" else "",
            esc(a.id),
            esc(route),
            esc(a.status),
            esc(a.created[:16].replace("T", " ")),
            esc(a.base_model[-30:]),
            esc_fmt(a.dataset_id),
            esc_fmt(m.get("eval_loss")),
            esc_fmt(m.get("pass_rate")),
        )
    console.print(table)


def history(rows: list) -> None:
    table = Table(title="adapter history")
    for col in ("time", "adapter", "from", "to", "actor", "reason"):
        table.add_column(col)
    for e in rows:
        table.add_row(
            esc(e.time), esc(e.adapter_id), esc_fmt(e.from_status), esc(e.to_status), esc(e.actor), esc(e.reason[:90])
        )
    console.print(table)


def selection(s: Any) -> None:
    what = s.adapter_id or f"base model {s.base_model or ''}".strip()
    console.print(
        f"{styled(what)} (route: {esc(s.route)}"
        + (f", experiment {esc(s.experiment_id)} arm {esc(s.arm)}" if s.experiment_id else "")
        + ")",
        highlight=False,
    )
    if s.adapter_path:
        console.print(f"  path {s.adapter_path}  base {s.base_model}", highlight=False, markup=False)
    if s.served_name:
        console.print(f"  served as {s.served_name} at {s.deployment_url or '-'}", highlight=False, markup=False)
    console.print(
        f"  decision_id {s.decision_id} (pass it to: learnloop log --decision-id)", highlight=False, markup=False
    )


def drift(r: Any) -> None:
    table = Table(title=f"drift of {esc(r.role)} ({esc(r.window)}, {esc(r.method)})")
    for col in ("arm", "adapter", "runs", "mean reward", "sd"):
        table.add_column(col)
    for name, arm in (("new", r.new), ("old", r.old)):
        table.add_row(name, esc(arm.adapter_id or "base"), esc(arm.runs), esc_fmt(arm.mean_reward), esc_fmt(arm.sd))
    console.print(table)
    color = {"regression": "red", "improvement": "green"}.get(r.decision, "yellow")
    console.print(f"{styled(r.decision, f'{color} bold')}: {esc(r.message)}", highlight=False)
    if r.rollback:
        console.print(r.rollback, highlight=False, markup=False)


def report(r: Any) -> None:
    console.print(f"wrote {r.path} ({r.runs} runs, {len(r.series)} lines)", highlight=False, markup=False)


def experiment(e: Any) -> None:
    route = "/".join(x for x in (e.role, e.task_type, e.complexity) if x)
    share = f" {e.fraction:.0%}" if e.fraction is not None else ""
    console.print(
        f"experiment {styled(e.id)} on {esc(route)}: {esc(e.candidate_id)} vs {esc(e.control_id or 'base')}, "
        f"{esc(e.mode)}{share}, {esc(e.status)}",
        highlight=False,
    )
    for a in e.arms:
        console.print(
            f"  {a.arm:9} {a.adapter_id or 'base':30} runs {a.runs:6}  mean reward {fmt(a.mean_reward)}",
            highlight=False,
            markup=False,
        )


def experiments(rows: list) -> None:
    for e in rows:
        experiment(e)
    if not rows:
        console.print("no experiments")


def export_result(r: Any) -> None:
    console.print(
        f"exported {styled(r['adapter_id'])} as {esc(r['format'])} ({esc(r['dtype'])}) to {esc(r['out_dir'])} "
        f"in {esc(r['seconds'])}s",
        highlight=False,
    )
    for line in r.get("checks", []):
        console.print(f"  [green]ok[/] {esc(line)}", highlight=False)
    for line in r.get("warnings", []):
        console.print(f"  [yellow]warning[/] {esc(line)}", highlight=False)
    table = Table(show_header=True)
    table.add_column("file")
    table.add_column("bytes", justify="right")
    for f in r.get("files", []):
        table.add_row(esc(f["path"]), esc(f["bytes"]))
    console.print(table)


def export_job(r: Any) -> None:
    if r.status == "succeeded" and r.result:
        export_result(r.result)
    else:
        console.print(
            f"export job {styled(r.job_id)} {esc(r.status)}"
            + (f": {esc(r.error)}" if r.error else "")
            + ("" if r.error else f"; follow it with: learnloop jobs {esc(r.job_id)} --wait"),
            highlight=False,
        )


def deployment(d: Any) -> None:
    state = "[green]active[/]" if d.status == "active" else styled(d.status, "yellow")
    console.print(
        f"{esc(d.adapter_id)} -> {esc(d.target)} {esc(d.url)} as {styled(d.served_name)} {state}"
        + (f" (deployment {esc(d.id)})" if d.id else " (not recorded)"),
        highlight=False,
    )
    if d.command:
        console.print("  command: " + " ".join(d.command), highlight=False, markup=False)
    for line in d.messages:
        console.print(f"  {line}", highlight=False, markup=False)


def deploy_target(r: Any) -> None:
    console.print(
        f"route {r.role} -> {r.target} {r.url}" if r else "route: no deployment target", highlight=False, markup=False
    )


def cycle_started(s: Any) -> None:
    console.print(
        f"cycle job {styled(s.job_id)} started for role {esc(s.role)}; "
        f"follow it with: learnloop jobs {esc(s.job_id)} --wait"
    )


def cycle_report(status: Any) -> None:
    job_status(status)
    stages = (status.result or {}).get("stages") or status.progress.get("stages") or []
    if stages:
        table = Table(title=f"cycle {esc(status.job_id)}")
        for col in ("stage", "status", "seconds", "detail"):
            table.add_column(col)
        for st in stages:
            d = st.get("detail", {})
            shown = ("dataset_id", "adapter_id", "eval_loss", "base_eval_loss", "gate_passed", "status", "decision")
            summary = ", ".join(f"{k}={fmt(d[k])}" for k in shown if k in d)
            note = d.get("error") or d.get("reason") or d.get("message") or summary
            table.add_row(esc(st["name"]), esc(st["status"]), esc_fmt(st["seconds"], 1), esc(str(note)[:100]))
        console.print(table)
