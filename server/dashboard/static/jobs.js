// Update queued and running jobs in place every 2 s from /api/jobs/<id>, their curves included;
// reload once one ends. Values go in as text or as numbers, never as markup.
"use strict";
(function () {
  const base = document.body.dataset.base || "";  // "/ui" when served beside the MCP server
  const rows = Array.from(document.querySelectorAll("tr[data-job]"));
  if (!rows.length) return;
  const show = (row, field, text) => {
    const cell = row.querySelector('[data-field="' + field + '"]');
    if (cell) cell.textContent = text;
  };
  const num = (v, digits) => (typeof v === "number" ? v.toFixed(digits) : "–");
  // The plot area of each curve's 320 x 120 box (see jobs.html).
  const X0 = 40, X1 = 310, Y0 = 100, Y1 = 8;
  function draw(svg, points) {
    const label = (name, text) => { svg.querySelector('[data-label="' + name + '"]').textContent = text; };
    const line = svg.querySelector("polyline");
    svg.classList.toggle("empty", !points.length);
    if (!points.length) { line.setAttribute("points", ""); return; }
    const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
    let lo = Math.min(...ys), hi = Math.max(...ys);
    if (lo === hi) { lo -= 1; hi += 1; }
    const first = xs[0], span = Math.max(xs[xs.length - 1] - first, 1);
    line.setAttribute("points", points.map((p) =>
      (X0 + (p[0] - first) / span * (X1 - X0)).toFixed(1) + "," + (Y0 - (p[1] - lo) / (hi - lo) * (Y0 - Y1)).toFixed(1)
    ).join(" "));
    label("high", hi.toPrecision(3));
    label("low", lo.toPrecision(3));
    label("steps", "steps " + first + "–" + xs[xs.length - 1]);
  }
  async function update(row) {
    const answer = await fetch(base + "/api/jobs/" + encodeURIComponent(row.dataset.job), { credentials: "same-origin" });
    if (!answer.ok) return true;
    const job = await answer.json();
    if (job.status !== "queued" && job.status !== "running") { location.reload(); return false; }
    show(row, "status", job.status);
    show(row, "steps", (job.step || 0) + "/" + (job.total_steps || "?"));
    show(row, "loss", num(job.loss, 3));
    show(row, "steps_per_s", num(job.steps_per_s, 2));
    show(row, "eta_s", num(job.eta_s, 0));
    show(row, "reward", num(job.reward, 3));
    show(row, "dropped_share", num(job.dropped_share, 2));
    show(row, "stage", job.message || job.stage || "");
    const bar = row.querySelector('[data-field="bar"]');
    if (bar) {
      bar.max = typeof job.total_steps === "number" && job.total_steps > 0 ? job.total_steps : 1;
      bar.value = typeof job.step === "number" ? job.step : 0;
    }
    const curves = row.nextElementSibling;
    if (curves && curves.dataset.curves === row.dataset.job) {
      for (const svg of curves.querySelectorAll("svg[data-curve]")) draw(svg, job[svg.dataset.curve] || []);
    }
    return true;
  }
  // A failed fetch or an odd answer skips that row this time; polling goes on either way.
  async function poll() {
    let again = true;
    for (const row of rows) {
      try { again = (await update(row)) && again; } catch (e) { /* the next poll tries again */ }
    }
    if (again) setTimeout(poll, 2000);
  }
  poll();
})();
