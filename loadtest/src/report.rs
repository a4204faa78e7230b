//! The HTML report: one self-contained file (no external URL) that opens from disk. The summary
//! is embedded as JSON; a small inline script draws SVG line charts of the per-second timeline:
//! latency percentiles, deliveries per second, connections (and the gateway's memory when known).
//! The chaos run's page ([`chaos_html`]) shares the style and the charts, and marks each fault on
//! every chart; its fault table is written into the page itself, so it reads without script.

use serde_json::Value;

pub fn html(summary: &Value) -> String {
    let title = format!(
        "herald-loadtest {} — {} connections",
        summary["scenario"].as_str().unwrap_or("run"),
        summary["connections"].as_u64().unwrap_or(0)
    );
    page(&title, SCENARIO_BODY, summary, SCENARIO_JS)
}

/// The chaos run's report: totals, the faults (a table, and a marker on every chart at each
/// kill and restart), publishes, deliveries, latency and open streams per second, and the
/// clients that lost, repeated or reordered anything.
pub fn chaos_html(summary: &Value) -> String {
    let c = &summary["config"];
    let title = format!(
        "herald-loadtest chaos — {} gateways, {} NATS nodes, {} s, seed {}",
        c["gateways"], c["nats_nodes"], c["duration_secs"], c["seed"]
    );
    let mut rows = String::new();
    for (i, f) in summary["faults"].as_array().into_iter().flatten().enumerate() {
        let secs = |v: &Value| v.as_f64().map_or("–".to_string(), |s| format!("{s:.2} s"));
        rows.push_str(&format!(
            "<tr class=\"fault-marker\" data-t=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            f["killed_at_s"].as_f64().unwrap_or(0.0),
            i + 1,
            escape(f["kind"].as_str().unwrap_or("")),
            escape(f["target"].as_str().unwrap_or("")),
            secs(&f["killed_at_s"]),
            secs(&f["restarted_at_s"]),
            secs(&f["healthy_at_s"]),
            escape(f["error"].as_str().unwrap_or("")),
        ));
    }
    let body = CHAOS_BODY.replace("__FAULT_ROWS__", &rows);
    page(&title, &body, summary, CHAOS_JS)
}

/// The page around a body: `__TITLE__`, the shared style, the body, the data, the shared chart
/// script and the page's own script.
fn page(title: &str, body: &str, summary: &Value, script: &str) -> String {
    // `</` cannot end the script element early once escaped.
    let data = serde_json::to_string(summary).expect("JSON").replace("</", "<\\/");
    let mut out = String::with_capacity(16 * 1024 + data.len());
    out.push_str("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>__TITLE__</title>\n");
    out.push_str(STYLE);
    out.push_str("\n</head>\n<body>\n");
    out.push_str(body);
    // The title goes in before the data, so that no data is ever taken for a placeholder.
    let mut out = out.replace("__TITLE__", &escape(title));
    out.push_str("<script id=\"data\" type=\"application/json\">");
    out.push_str(&data);
    out.push_str("</script>\n<script>\n");
    out.push_str(CHART_JS);
    out.push_str(script);
    out.push_str("</script>\n</body>\n</html>\n");
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

const STYLE: &str = r##"<style>
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
  th { text-align: left; padding: 2px 12px 2px 0; color: #5b6477; font-weight: 500; }
</style>"##;

/// `chart(id, series, markers)`, `el`, `nice` and the data `S` (the summary) and `T` (its timeline).
const CHART_JS: &str = r##""use strict";
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

// series: [{name, color, values: [number|null]}], x: seconds; markers: [{t, label, color}], each
// drawn as a labelled vertical line at its second.
function chart(id, series, markers) {
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
  const ms = markers || [];
  const x0 = Math.min(...xs), x1 = Math.max(...xs, ...ms.map(m => m.t), x0 + 1);
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
  ms.forEach((m, i) => {
    const x = sx(Math.max(x0, m.t));
    el("line", { x1: x, x2: x, y1: TOP, y2: H - B, stroke: m.color, "stroke-dasharray": "4 3", class: "marker" }, svg);
    el("text", { x: x + 3, y: TOP + 10 + (i % 4) * 12, "font-size": 10, fill: m.color, class: "marker-label" }, svg).textContent = m.label;
  });
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

"##;

const SCENARIO_BODY: &str = r##"<h1>__TITLE__</h1>
<div id="meta"></div>
<h2>Summary</h2>
<table id="summary"></table>
<div class="chart" id="latency"><h2>Delivery latency per second (ms)</h2></div>
<div class="chart" id="rate"><h2>Deliveries per second</h2></div>
<div class="chart" id="conns"><h2>Open connections</h2></div>
<div class="chart" id="rss"><h2>Gateway memory (MiB)</h2></div>
"##;

const SCENARIO_JS: &str = r##"function row(k, v, cls) {
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
"##;

const CHAOS_BODY: &str = r##"<h1>__TITLE__</h1>
<div id="meta"></div>
<h2>Summary</h2>
<table id="summary"></table>
<h2>Faults</h2>
<table id="faults">
<tr><th>#</th><th>kind</th><th>target</th><th>killed</th><th>restarted</th><th>healthy</th><th>error</th></tr>
__FAULT_ROWS__</table>
<div class="chart" id="published"><h2>Publishes per second (dashed: a kill, dotted: its restart)</h2></div>
<div class="chart" id="delivered"><h2>Deliveries per second</h2></div>
<div class="chart" id="latency"><h2>End-to-end latency per second (ms, first attempt to delivery)</h2></div>
<div class="chart" id="conns"><h2>Open streams</h2></div>
<h2>Clients with problems</h2>
<table id="problems"></table>
"##;

const CHAOS_JS: &str = r##"function row(table, cells, cls) {
  const tr = document.createElement("tr");
  cells.forEach((v, i) => {
    const td = document.createElement("td");
    td.textContent = v === null || v === undefined ? "–" : v;
    if (i === cells.length - 1 && cls) td.className = cls;
    tr.appendChild(td);
  });
  document.getElementById(table).appendChild(tr);
}

const C = S.config || {}, X = S.totals || {}, lat = S.latency_ms || {};
document.getElementById("meta").textContent =
  `seed ${C.seed} · ${C.gateways} gateways · ${C.nats_nodes} NATS nodes (R${C.history_replicas}) · ${C.clients} clients · ` +
  `${C.rate} publishes/s · fault every ${C.fault_every_secs} s · started ${new Date(S.started_unix_ms).toISOString()}`;
const good = v => v ? "bad" : "ok";
row("summary", ["result", S.ok ? "no event lost, repeated or reordered" : "problems found"], S.ok ? "ok" : "bad");
row("summary", ["published / acknowledged", `${X.published} / ${X.acknowledged}`]);
row("summary", ["abandoned / rejected", `${X.abandoned} / ${X.rejected}`], good(X.abandoned + X.rejected));
row("summary", ["publish retries (publishes retried)", `${X.publish_retries} (${X.publishes_retried})`]);
row("summary", ["answered 503 / no answer", `${X.publish_503} / ${X.publish_connection_errors}`]);
row("summary", ["delivered / expected", `${X.delivered} / ${X.expected}`]);
row("summary", ["lost", X.lost], good(X.lost));
row("summary", ["duplicates", X.duplicates], good(X.duplicates));
row("summary", ["out of order", X.out_of_order], good(X.out_of_order));
row("summary", ["streams / resumes (deliberate)", `${X.streams} / ${X.resumes} (${X.deliberate_resumes})`]);
row("summary", ["resets / not resumed", `${X.resets} / ${X.not_resumed}`], good(X.resets + X.not_resumed));
row("summary", ["latency p50 / p90 / p99 / max (ms)", [lat.p50, lat.p90, lat.p99, lat.max].join(" / ")]);
row("summary", ["faults: gateway / NATS", `${S.faults_by_kind.gateway} / ${S.faults_by_kind.nats}`]);

const M = [];
(S.faults || []).forEach((f, i) => {
  const color = f.kind === "nats" ? "#b3261e" : "#7a4fd0";
  M.push({ t: f.killed_at_s, label: `#${i + 1} kill ${f.target}`, color });
  if (f.restarted_at_s != null) M.push({ t: f.restarted_at_s, label: "", color: "#1b7f3b" });
});
chart("published", [
  { name: "published", color: "#2a6fdb", values: T.map(p => p.published) },
  { name: "acknowledged", color: "#17a398", values: T.map(p => p.acknowledged) },
  { name: "retries", color: "#e8871e", values: T.map(p => p.retries) },
  { name: "503", color: "#b3261e", values: T.map(p => p.publish_503) },
], M);
chart("delivered", [{ name: "deliveries/s", color: "#2a6fdb", values: T.map(p => p.delivered) }], M);
chart("latency", [
  { name: "p50", color: "#2a6fdb", values: T.map(p => p.p50_ms) },
  { name: "p90", color: "#17a398", values: T.map(p => p.p90_ms) },
  { name: "p99", color: "#e8871e", values: T.map(p => p.p99_ms) },
  { name: "max", color: "#b3261e", values: T.map(p => p.max_ms) },
], M);
chart("conns", [{ name: "streams", color: "#17a398", values: T.map(p => p.connections) }], M);
if (!(S.problems || []).length) row("problems", ["none"], "ok");
for (const p of S.problems || []) {
  const r = p.result;
  row("problems", [`client ${p.client} (${p.user}; ${p.channels.join(", ")})`,
    `lost ${r.lost}, duplicates ${r.duplicates}, out of order ${r.out_of_order}, streams ${p.streams.length}`], "bad");
}
document.body.setAttribute("data-drawn", document.querySelectorAll("path.series").length);
"##;

#[cfg(test)]
mod tests {
    #[test]
    fn the_chaos_page_lists_and_marks_every_fault() {
        let s = serde_json::json!({
            "config": {"gateways": 2, "nats_nodes": 3, "duration_secs": 20, "seed": 1},
            "faults": [
                {"kind": "gateway", "target": "gateway-1", "killed_at_s": 4.2, "restarted_at_s": 6.0, "healthy_at_s": 6.5},
                {"kind": "nats", "target": "nats-0</td>", "killed_at_s": 8.1, "restarted_at_s": 10.0, "healthy_at_s": null},
            ],
            "timeline": [],
        });
        let page = super::chaos_html(&s);
        assert_eq!(page.matches("class=\"fault-marker\"").count(), 2);
        assert!(page.contains("data-t=\"8.1\""));
        assert!(!page.contains("nats-0</td>"), "escaped");
        assert!(page.contains("function chart(id, series, markers)"));
        assert!(!page.contains("src=\"http"), "no external scripts");
    }

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
