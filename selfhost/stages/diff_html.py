"""The ``--html`` report of ``invoke diff-stages``: one self-contained page.

No scripts, fonts or images are fetched: the styles are inline and the per-section
bar charts are plain ``<div>`` bars scaled to the largest section of each file.
"""

from __future__ import annotations

import html
from typing import Any

from selfhost.stages.diff import DiffReport

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.3em}.verdict{padding:.8em 1em;border-radius:6px;font-weight:600}
.ok{background:#e6f4ea;color:#137333}.bad{background:#fce8e6;color:#a50e0e}
table{border-collapse:collapse;margin:1em 0;width:100%}
th,td{border-bottom:1px solid #ddd;padding:.35em .6em;text-align:left;vertical-align:top}
th{background:#f5f5f5}code{font-size:.92em}.muted{color:#777}
.cause{display:inline-block;padding:0 .5em;border-radius:3px;background:#eef;font-size:.9em}
.chart{margin:.2em 0 1.2em 0}.row{display:flex;align-items:center;gap:.6em;margin:2px 0}
.label{width:14em;font-family:monospace;font-size:.85em;overflow:hidden;text-overflow:ellipsis}
.bar{background:#d93025;height:12px;border-radius:2px;min-width:1px}
.num{font-size:.85em;color:#555}
"""


def render(report: DiffReport, title: str) -> str:
    """The whole HTML page for a report."""
    e = html.escape
    data = report.to_json()
    verdict = report.verdict_line(fixpoint=title.startswith("stage"))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p class='verdict {'ok' if report.identical else 'bad'}'>{e(verdict)}</p>",
        f"<p class='muted'>left: <code>{e(data['left'])}</code><br>right: "
        f"<code>{e(data['right'])}</code><br>{data['summary']['files']} files compared in "
        f"{data['seconds']} s{' from manifests' if data['from_manifests'] else ''}</p>",
        "<table><tr><th>file</th><th>status</th><th>cause</th><th>strings diff lines</th>"
        "<th>evidence</th></tr>",
    ]
    interesting = [f for f in data["files"] if f["status"] != "identical"]
    for f in interesting:
        if f.get("reason"):
            evidence = "excluded: " + e(f["reason"])
        else:
            evidence = "<br>".join(e(x) for x in f.get("evidence", [])[:6])
        lines = "" if f["strings_diff_lines"] is None else str(f["strings_diff_lines"])
        parts.append(
            f"<tr><td><code>{e(f['path'])}</code></td><td>{e(f['status'])}</td>"
            f"<td>{_cause(f)}</td><td>{lines}</td><td>{evidence}</td></tr>"
        )
    if not interesting:
        parts.append("<tr><td colspan='5' class='muted'>every file is identical</td></tr>")
    parts.append("</table>")
    charted = [f for f in interesting if f.get("sections")]
    if charted:
        parts.append("<h2>Differing bytes per section</h2>")
    for f in charted:
        parts.append(f"<h3><code>{e(f['path'])}</code></h3><div class='chart'>")
        parts.extend(_bars(f["sections"]))
        parts.append("</div>")
    parts.append("</body></html>\n")
    return "".join(parts)


def _cause(f: dict[str, Any]) -> str:
    return f"<span class='cause'>{html.escape(f['cause'])}</span>" if f.get("cause") else ""


def _bars(sections: list[dict[str, Any]]) -> list[str]:
    top = max((s["differing_bytes"] for s in sections), default=0) or 1
    rows = []
    for s in sections[:30]:
        width = max(0.5, 100 * s["differing_bytes"] / top)
        rows.append(
            f"<div class='row'><span class='label'>{html.escape(s['name'])}</span>"
            f"<span class='bar' style='width:{width:.1f}%'></span>"
            f"<span class='num'>{s['differing_bytes']}</span></div>"
        )
    return rows
