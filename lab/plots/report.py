"""A sweep's table as CSV and JSON, and the self-contained HTML report: its table, each figure of
lab/plots/sweep.py inlined with the caption registered beside it, and the failed jobs with the
commands that rerun them. `write_report` writes them all; `lab-sweep` calls it."""
from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
from pathlib import Path

from lab.analysis.sweep import (COMPLETED, FAILED, INCOMPLETE, Sweep, condition_cells, condition_header, condition_label,
                                condition_rows, fmt_value, is_number, multirun_command, rerun_command, scan)
from lab.plots.run import FIGURES as RUN_FIGURES
from lab.plots.sweep import SWEEP_FIGURES, ordered_condition_rows, plot_sweep


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _write_csv(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if v is None else v for k, v in r.items()})
    return path


def _write_json(sweep: Sweep, path: Path) -> Path:
    doc = {"sweep_dir": str(sweep.dir), "command": sweep.command, "common_overrides": sweep.common,
           "swept": sweep.swept, "counts": sweep.counts(), "conditions": condition_rows(sweep),
           "rows": [{k: _json_value(v) for k, v in r.items()} for r in sweep.public_rows]}
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return path


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f;
       margin: 0; background: #f6f7f9; }
main { max-width: 1500px; margin: 0 auto; padding: 20px 20px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 32px 0 10px; }
code, pre { font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.sub { color: #555; margin: 0 0 14px; word-break: break-all; }
.cards { display: flex; gap: 10px; flex-wrap: wrap; margin: 12px 0; }
.card { background: #fff; border: 1px solid #dde1e6; border-radius: 8px; padding: 8px 16px; min-width: 90px; }
.card b { display: block; font-size: 22px; } .card span { color: #555; font-size: 12.5px; }
.card.ok b { color: #1a7f37; } .card.bad b { color: #c62828; } .card.warn b { color: #b26a00; }
.meta { background: #fff; border: 1px solid #dde1e6; border-radius: 8px; padding: 10px 14px; }
.meta div { margin: 2px 0; }
.tablewrap { overflow: auto; max-height: 70vh; border: 1px solid #dde1e6; border-radius: 8px; background: #fff; }
/* fits a 1400 px laptop screen: headers wrap (at the underscores, <wbr>), cells wrap long text, and
   the table never grows wider than the page */
table { border-collapse: collapse; font-size: 12px; width: 100%; }
th, td { padding: 3px 5px; border-bottom: 1px solid #eceef1; text-align: right; }
th { white-space: normal; font-weight: 600; font-size: 11.5px; line-height: 1.2; vertical-align: bottom; }
td { white-space: nowrap; } td.text { white-space: normal; } td.status { white-space: nowrap; }
th { position: sticky; top: 0; background: #eef1f5; cursor: pointer; user-select: none; text-align: center; }
th:hover { background: #e0e6ee; }
th[data-order=asc]::after { content: " \\25B2"; } th[data-order=desc]::after { content: " \\25BC"; }
td.text { text-align: left; }
td.err { text-align: left; max-width: 220px; overflow: hidden; text-overflow: ellipsis; color: #8a1c1c; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 6px 16px; }
.plots div { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; padding: 6px 10px; }
.plots a, td a { color: #0b57d0; text-decoration: none; } .plots a:hover, td a:hover { text-decoration: underline; }
tbody tr:nth-child(even) { background: #fafbfc; } tbody tr:hover { background: #eef5ff; }
tr.failed td.status { color: #c62828; font-weight: 600; } tr.completed td.status { color: #1a7f37; }
tr.incomplete td.status { color: #b26a00; font-weight: 600; }
td.none { color: #aaa; }
figure { background: #fff; border: 1px solid #dde1e6; border-radius: 8px; margin: 0 0 20px; padding: 12px; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { color: #444; margin-top: 6px; font-size: 13px; }
.job { background: #fff; border: 1px solid #f0c7c7; border-left: 4px solid #c62828; border-radius: 6px;
       padding: 8px 12px; margin: 8px 0; }
.job.incomplete { border-color: #f1dcb5; border-left-color: #b26a00; }
.job .error { color: #8a1c1c; margin: 4px 0; }
pre { background: #f1f3f6; border-radius: 6px; padding: 8px 10px; overflow-x: auto; white-space: pre; margin: 6px 0; }
.note { color: #555; font-size: 13px; }
"""

SCRIPT = """
function cellValue(td) {
  const v = td.dataset.v;
  if (v === undefined || v === "") return null;
  const n = Number(v);
  return Number.isNaN(n) ? v.toLowerCase() : n;
}
document.querySelectorAll("table.sortable th").forEach((th, col) => {
  th.addEventListener("click", () => {
    const table = th.closest("table"), body = table.tBodies[0];
    const asc = th.dataset.order !== "asc";
    table.querySelectorAll("th").forEach(h => delete h.dataset.order);
    th.dataset.order = asc ? "asc" : "desc";
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {
      const x = cellValue(a.cells[col]), y = cellValue(b.cells[col]);
      if (x === null || y === null) return (x === null) - (y === null);   // empty cells last
      const c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
      return asc ? c : -c;
    });
    rows.forEach(r => body.appendChild(r));
  });
});
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesLoaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  // how far the page, or any table, would scroll sideways (0: it fits the window)
  const wide = [document.documentElement.scrollWidth - window.innerWidth]
    .concat(Array.from(document.querySelectorAll(".tablewrap"), w => w.scrollWidth - w.clientWidth));
  document.body.dataset.overflowX = Math.max(0, ...wide);
});
"""

HTML_HIDDEN = ("overrides", "run_dir")   # and <main metric>_reason, shown as the midpoint's tooltip


def _caption(name: str) -> str:
    figure = SWEEP_FIGURES.get(name)
    return figure.caption if figure is not None else name


def _job_plots(job_dir: Path, out: Path) -> list[tuple[str, str]]:
    """(figure name, link relative to the report's directory) of each run figure in `<job>/plots`, in
    the run figures' order."""
    plots = job_dir / "plots"
    if not plots.is_dir():
        return []
    names = [n for n in RUN_FIGURES if (plots / f"{n}.png").is_file()]
    names += sorted(p.stem for p in plots.glob("*.png") if p.stem not in names)
    return [(n, Path(os.path.relpath(plots / f"{n}.png", out)).as_posix()) for n in names]


def _header(key: str) -> str:
    """A column name that may wrap after each underscore."""
    return "_<wbr>".join(html.escape(part) for part in key.split("_"))


def _td(row: dict, key: str, link: str | None = None) -> str:
    v = row.get(key)
    classes = []
    if key == "status":
        classes.append("status text")
    elif key == "error":
        classes.append("err")
    elif isinstance(v, str) and not is_number(v):
        classes.append("text")
    if v is None:
        classes.append("none")
    sort = "" if v is None else ("1" if v is True else "0" if v is False else str(v))
    title = ""
    reason = key.removesuffix("_midpoint") + "_reason"
    if key.endswith("_midpoint") and v is None and row.get(reason):
        title = f' title="{html.escape(row[reason])}"'
    elif key == "job":
        title = f' title="{html.escape(row["overrides"])}"'
    elif key in ("error", "status") and row.get("error"):
        title = f' title="{html.escape(row["error"])}"'
    cls = f' class="{" ".join(classes)}"' if classes else ""
    text = html.escape(fmt_value(v, key))
    if "text" in classes:
        text = text.replace("_", "_<wbr>")      # long names wrap after their underscores
    if link:
        text = f'<a href="{html.escape(link)}">{text}</a>'
    return f'<td{cls} data-v="{html.escape(sort)}"{title}>{text}</td>'


def _html_table(sweep: Sweep, out: Path) -> str:
    keys = [k for k in sweep.rows[0] if not k.startswith("_") and k not in HTML_HIDDEN and not k.endswith("_reason")]
    empty = [k for k in keys if all(r.get(k) is None or r.get(k) == "" for r in sweep.rows)]
    keys = [k for k in keys if k not in empty]        # so that the table fits the page; sweep.csv has them all
    head = "".join(f"<th>{_header(k)}</th>" for k in keys)
    first = {}     # a job's cell links to its first figure (loss.png)
    for j in sweep.jobs:
        plots = _job_plots(j.dir, out)
        first[id(j)] = plots[0][1] if plots else None
    body = "\n".join(f'<tr class="{r["_category"]}">'
                     + "".join(_td(r, k, first[id(r["_job"])] if k == "job" else None) for k in keys) + "</tr>"
                     for r in sweep.rows)
    note = (f'<p class="note">Columns empty in every row are left out here (sweep.csv has them): '
            f'{", ".join(f"<code>{html.escape(k)}</code>" for k in empty if k != "error")}.</p>'
            if any(k != "error" for k in empty) else "")
    return (f'{note}<div class="tablewrap"><table class="sortable"><thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody></table></div>")


def _html_job_plots(sweep: Sweep, out: Path) -> str:
    """Each job's run figures (lab-plot's <job>/plots/*.png), linked relative to the report."""
    parts = []
    for j in sweep.jobs:
        plots = _job_plots(j.dir, out)
        what = html.escape(condition_label(j.params, sweep.swept) if sweep.swept else " ".join(j.overrides))
        links = " · ".join(f'<a href="{html.escape(href)}">{html.escape(name)}</a>' for name, href in plots)
        if not links:
            links = '<span class="note">no plots (draw them with <code>lab-plot ' + html.escape(str(j.dir)) + "</code>)</span>"
        parts.append(f"<div><b>job {html.escape(j.name)}</b> <span class=\"note\">{what}</span><br>{links}</div>")
    return ("<h2>Plots of each job</h2><p class=\"note\">The run figures of every job (links relative to this "
            "report: keep it beside the sweep's job directories).</p><div class=\"plots\">" + "".join(parts) + "</div>")


def _html_problems(sweep: Sweep) -> str:
    bad = [j for j in sweep.jobs if j.category != COMPLETED]
    if not bad:
        return "<h2>Failed jobs</h2><p>None: every job completed.</p>"
    parts = [f"<h2>Failed and unfinished jobs ({len(bad)})</h2>"]
    for j in bad:
        kind = "failed" if j.category == FAILED else "incomplete"
        overrides = html.escape(" ".join(j.overrides) or "(no overrides)")
        error = f'<div class="error">{html.escape(j.error)}</div>' if j.error else ""
        parts.append(f'<div class="job {kind}"><b>job {html.escape(j.name)}</b> — {html.escape(j.status)}'
                     f"{error}<div class=\"note\"><code>{overrides}</code></div></div>")
    failed = [j for j in bad if j.category == FAILED]
    parts.append("<p>Rerun only these jobs (one command each; a job whose directory holds a killed run's "
                 "checkpoint resumes with <code>train.resume=true</code>, one whose directory already holds "
                 "metrics reruns into <code>&lt;job&gt;-rerun</code>):</p>")
    parts.append("<pre>" + html.escape("\n".join(rerun_command(j) for j in bad)) + "</pre>")
    combined = multirun_command(failed, sweep.dir, sweep.cluster_launcher)
    if combined:
        parts.append("<p>or the failed ones as one multirun:</p><pre>" + html.escape(combined) + "</pre>")
    if failed:
        parts.append('<p class="note">A config error or a diverged run fails again with the same overrides: '
                     "change the value the error names (for a divergence e.g. a lower <code>optim.lr</code> or "
                     "<code>optim.grad_clip=1.0</code>) before rerunning.</p>")
    return "\n".join(parts)


def _html_conditions(sweep: Sweep) -> str:
    """The per-condition statistics (condition_rows) as a small table, the baseline first."""
    rows = ordered_condition_rows(sweep)
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in condition_header(sweep))
    body = "".join("<tr>" + "".join(f'<td class="text">{html.escape(c)}</td>' for c in condition_cells(r)) + "</tr>"
                   for r in rows)
    return (f"<h2>Per condition</h2><p class=\"note\">Over each condition's completed seeds: mean ± sample std "
            f"(ddof 1) [bootstrap 95 % interval] (n seeds); counts of seeds with their exact binomial 95 % interval."
            f"</p><div class=\"tablewrap\"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")


def _html(sweep: Sweep, figures: dict[str, Path], out: Path) -> str:
    c = sweep.counts()
    cards = [(c["jobs"], "jobs", ""), (c["seeds"], "seeds (rows)", ""), (c[COMPLETED], "completed", "ok"),
             (c[FAILED], "failed", "bad" if c[FAILED] else ""),
             (c[INCOMPLETE], "unfinished", "warn" if c[INCOMPLETE] else ""),
             (f"{c['seeds_with_phase_change']}/{c['seeds_completed']}", "seeds with a phase change", "")]
    cards_html = "".join(f'<div class="card {cls}"><b>{html.escape(str(n))}</b><span>{html.escape(t)}</span></div>'
                         for n, t, cls in cards)
    meta = []
    if sweep.command:
        meta.append("<div>sweep: <code>" + html.escape(" ".join(["lab-train", "-m", *sweep.command])) + "</code></div>")
    meta.append("<div>swept: " + (", ".join(f"<code>{html.escape(k)}</code>" for k in sweep.swept) or "nothing but seeds")
                + "</div>")
    if sweep.common:
        meta.append("<div>common overrides: <code>" + html.escape(" ".join(sweep.common)) + "</code></div>")
    figs = []
    for name, path in figures.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        figs.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(name)}">'
                    f"<figcaption>{html.escape(_caption(name))}</figcaption></figure>")
    title = f"Sweep {sweep.dir}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{CSS}</style></head>
<body><main>
<h1>Sweep report</h1>
<p class="sub">{html.escape(str(sweep.dir.resolve()))}</p>
<div class="cards">{cards_html}</div>
<div class="meta">{''.join(meta)}</div>
{_html_conditions(sweep)}
<h2>Table: one row per job and seed</h2>
<p class="note">Click a column to sort. Steps are training steps; <code>loss_repeat_*</code> is the repeated-part
loss phase change of that seed (midpoint and onset only where one was detected; hover a missing midpoint for the
reason), <code>&lt;group&gt;_midpoint</code> the earliest detected per-head phase change, <code>final_*</code>
the last logged values. Hover a job for its overrides; click it for its figures.</p>
{_html_table(sweep, out)}
<h2>Figures</h2>
{''.join(figs) or '<p>No figures: no job logged metrics.</p>'}
{_html_job_plots(sweep, out)}
{_html_problems(sweep)}
</main>
<script>{SCRIPT}</script>
</body></html>
"""


def write_report(sweep_dir, out_dir=None, sweep: Sweep | None = None) -> dict[str, Path]:
    """Write sweep.csv, sweep.json, the figures (phase_vs_params.png, loss_curves.png and, with two
    or more swept parameters, phase_grid.png) and a self-contained report.html into `out_dir`
    (default `<sweep_dir>/report`). Returns {"csv", "json", <figure names>, "html"} -> path."""
    sweep = sweep or scan(sweep_dir)
    out = Path(out_dir) if out_dir is not None else Path(sweep_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    written = {"csv": _write_csv(sweep.public_rows, out / "sweep.csv"), "json": _write_json(sweep, out / "sweep.json")}
    written.update(plot_sweep(sweep, out))
    html_path = out / "report.html"
    html_path.write_text(_html(sweep, {k: v for k, v in written.items() if k in SWEEP_FIGURES}, out), encoding="utf-8")
    written["html"] = html_path
    return written


