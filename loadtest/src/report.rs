//! The HTML report: one self-contained file (no external URL) that opens from disk. The summary
//! is embedded as JSON; a small inline script draws SVG line charts of the per-second timeline:
//! latency percentiles, deliveries per second, connections (and the gateway's memory when known).

use serde_json::Value;

pub fn html(summary: &Value) -> String {
    // `</` cannot end the script element early once escaped.
    let data = serde_json::to_string(summary).expect("JSON").replace("</", "<\\/");
    let title = format!(
        "herald-loadtest {} — {} connections",
        summary["scenario"].as_str().unwrap_or("run"),
        summary["connections"].as_u64().unwrap_or(0)
    );
    TEMPLATE.replace("__TITLE__", &escape(&title)).replace("__DATA__", &data)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

const TEMPLATE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d2433; max-width: 1000px; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  h2 { font-size: 15px; margin: 24px 0 6px; }
  table { border-collapse: collapse; }
  td { padding: 2px 12px 2px 0; }
  td:first-child { color: #5b6477; }
  .chart svg { width: 100%; height: 240px; background: #fafbfd; border: 1px solid #e3e6ee; }
  .legend span { margin-right: 14px; }
  .legend i { display: inline-block; width: 12px; height: 3px; margin-right: 4px; vertical-align: middle; }
  .bad { color: #b3261e; font-weight: 600; }
  .ok { color: #1b7f3b; font-weight: 600; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
<div id="meta"></div>
<h2>Summary</h2>
<table id="summary"></table>
<div class="chart" id="latency"><h2>Delivery latency per second (ms)</h2></div>
<div class="chart" id="rate"><h2>Deliveries per second</h2></div>
<div class="chart" id="conns"><h2>Open connections</h2></div>
<div class="chart" id="rss"><h2>Gateway memory (MiB)</h2></div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const S = JSON.parse(document.getElementById("data").textContent);
const T = S.timeline || [];
const NS = "http://www.w3.org/2000/svg";

function el(name, attrs, parent) {
  const e = document.createElementNS(NS, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}

function nice(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (v >= 1e3) return (v / 1e3).toFixed(1) + "k";
  return Math.round(v * 100) / 100 + "";
}

// series: [{name, color, values: [number|null]}], x: seconds
function chart(id, series) {
  const box = document.getElementById(id);
  const W = 960, H = 240, L = 56, R = 12, TOP = 12, B = 28;
  const xs = T.map(p => p.t);
  const all = series.flatMap(s => s.values).filter(v => v !== null && v !== undefined);
  if (!xs.length || !all.length) {
    const p = document.createElement("p");
    p.textContent = "no data";
    box.appendChild(p);
    return;
  }
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  const ymax = Math.max(...all, 1e-9) * 1.08;
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = y => TOP + (1 - y / ymax) * (H - TOP - B);
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" }, box);
  for (let i = 0; i <= 4; i++) {
    const y = ymax * i / 4;
    el("line", { x1: L, x2: W - R, y1: sy(y), y2: sy(y), stroke: "#e3e6ee" }, svg);
    el("text", { x: L - 6, y: sy(y) + 4, "text-anchor": "end", "font-size": 11, fill: "#5b6477" }, svg).textContent = nice(y);
  }
  for (let i = 0; i <= 5; i++) {
    const x = x0 + (x1 - x0) * i / 5;
    el("text", { x: sx(x), y: H - 8, "text-anchor": "middle", "font-size": 11, fill: "#5b6477" }, svg).textContent = Math.round(x) + " s";
  }
  const legend = document.createElement("div");
  legend.className = "legend";
  for (const s of series) {
    let d = "", pen = false;
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) { pen = false; return; }
      d += (pen ? "L" : "M") + sx(xs[i]).toFixed(1) + " " + sy(v).toFixed(1) + " ";
      pen = true;
    });
    if (d) el("path", { d: d.trim(), fill: "none", stroke: s.color, "stroke-width": 2, class: "series", "data-name": s.name }, svg);
    const item = document.createElement("span");
    const sw = document.createElement("i");
    sw.style.background = s.color;
    item.appendChild(sw);
    item.appendChild(document.createTextNode(s.name));
    legend.appendChild(item);
  }
  box.appendChild(legend);
}

function row(k, v, cls) {
  const tr = document.createElement("tr");
  const a = document.createElement("td"), b = document.createElement("td");
  a.textContent = k;
  b.textContent = v === null || v === undefined ? "–" : v;
  if (cls) b.className = cls;
  tr.appendChild(a); tr.appendChild(b);
  document.getElementById("summary").appendChild(tr);
}

document.getElementById("meta").textContent =
  `${S.mode} mode · targets ${(S.targets || []).join(", ")} · rate ${S.rate}/s · ${S.duration_secs} s · started ${new Date(S.started_unix_ms).toISOString()}`;
const lat = S.latency_ms || {};
row("delivered / expected", `${S.delivered} / ${S.expected}`);
row("missing", S.missing, S.missing ? "bad" : "ok");
row("duplicates", S.duplicates, S.duplicates ? "bad" : "ok");
row("out of order", S.out_of_order, S.out_of_order ? "bad" : "ok");
row("deliveries/s", S.deliveries_per_sec);
row("latency p50 / p90 / p99 / p99.9 / max (ms)", [lat.p50, lat.p90, lat.p99, lat.p999, lat.max].join(" / "));
row("connected / failed", `${S.connect.connected} / ${S.connect.failed}`);
row("connect rate (/s)", S.connect.rate_per_sec);
row("connect latency p50 / p99 (ms)", `${S.connect.latency_ms.p50} / ${S.connect.latency_ms.p99}`);
row("gateway RSS per connection (bytes)", S.gateway.rss_per_connection_bytes);
row("client CPU (s) / max process CPU ratio", `${S.client.cpu_seconds} / ${S.client.max_process_cpu_ratio}`);
row("client saturated", S.client_saturated ? "yes: the load generator was the bottleneck" : "no", S.client_saturated ? "bad" : "ok");
if (S.resume) row("resume: caught up / not (catch-up p99 ms)", `${S.resume.caught_up} / ${S.resume.not_caught_up} (${S.resume.catch_up_ms.p99})`);
if (S.churn) row("churn: gauge returned to 0", S.churn.gateway.gauge_returned_to_zero ? "yes" : "no", S.churn.gateway.gauge_returned_to_zero ? "ok" : "bad");

chart("latency", [
  { name: "p50", color: "#2a6fdb", values: T.map(p => p.p50_ms) },
  { name: "p90", color: "#17a398", values: T.map(p => p.p90_ms) },
  { name: "p99", color: "#e8871e", values: T.map(p => p.p99_ms) },
  { name: "max", color: "#b3261e", values: T.map(p => p.max_ms) },
]);
chart("rate", [{ name: "deliveries/s", color: "#2a6fdb", values: T.map(p => p.deliveries) }]);
chart("conns", [{ name: "connections", color: "#17a398", values: T.map(p => p.connections) }]);
chart("rss", [{ name: "RSS", color: "#7a4fd0", values: T.map(p => p.gateway_rss_bytes == null ? null : p.gateway_rss_bytes / 1048576) }]);
document.body.setAttribute("data-drawn", document.querySelectorAll("path.series").length);
</script>
</body>
</html>
"##;

#[cfg(test)]
mod tests {
    #[test]
    fn is_self_contained_and_escapes_the_data() {
        let s =
            serde_json::json!({"scenario": "fanout", "connections": 3, "targets": ["</script><b>"], "timeline": []});
        let page = super::html(&s);
        assert!(!page.contains("</script><b>"));
        assert!(!page.contains("src=\"http"), "no external scripts");
        assert!(!page.contains("href=\"http"), "no external styles");
    }
}
