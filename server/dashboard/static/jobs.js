// Update queued and running jobs in place every 2 s from /api/jobs/<id>; reload once one ends.
"use strict";
(function () {
  const base = document.body.dataset.base || "";  // "/ui" when served beside the MCP server
  const rows = Array.from(document.querySelectorAll("tr[data-job]"));
  if (!rows.length) return;
  const show = (row, field, text) => {
    const cell = row.querySelector('[data-field="' + field + '"]');
    if (cell) cell.textContent = text;  // text only, never markup
  };
  const num = (v, digits) => (typeof v === "number" ? v.toFixed(digits) : "–");
  async function poll() {
    for (const row of rows) {
      const answer = await fetch(base + "/api/jobs/" + encodeURIComponent(row.dataset.job), { credentials: "same-origin" });
      if (!answer.ok) continue;
      const job = await answer.json();
      if (job.status !== "queued" && job.status !== "running") { location.reload(); return; }
      show(row, "status", job.status);
      show(row, "steps", (job.step || 0) + "/" + (job.total_steps || "?"));
      show(row, "loss", num(job.loss, 3));
      show(row, "eta_s", num(job.eta_s, 0));
      show(row, "stage", job.message || job.stage || "");
      const bar = row.querySelector('[data-field="bar"]');
      if (bar) { bar.max = job.total_steps || 1; bar.value = job.step || 0; }
    }
    setTimeout(poll, 2000);
  }
  setTimeout(poll, 2000);
})();
