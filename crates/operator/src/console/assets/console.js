// The console's page logic: polls /api/status, follows /api/events (SSE), kills through
// POST with the CSRF token. No framework, no inline script (the CSP forbids it).
"use strict";

const POLL_MS = 5000;
const CHART_POINTS = 120; // 10 minutes of 5 s samples
let csrf = "";
let status = null;
const history = { sessions: [], requests: [] };
let lastStolen = null;

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function duration(secs) {
  const h = Math.floor(secs / 3600), m = Math.floor((secs % 3600) / 60), s = secs % 60;
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + s + "s";
}

function ports(s) {
  return s.ports.map((p) => p.port + " " + p.mode + (p.filter ? " [" + p.filter + "]" : "") +
    (p.skipped ? " (skipped)" : "")).join(", ");
}

async function poll() {
  try {
    const r = await fetch("api/status", { credentials: "same-origin" });
    if (r.status === 401) { $("whoami").textContent = "logged out: run `mirrordctl console login`"; return; }
    status = await r.json();
    csrf = status.csrf;
    render();
  } catch (e) {
    $("whoami").textContent = "operator unreachable (" + e + ")";
  }
}

function render() {
  $("logout").hidden = !status.can_log_out;
  $("whoami").textContent = status.caller.client_user + " (" + status.caller.role + ") · operator " + status.operator_version;
  $("n-sessions").textContent = status.sessions.length;
  const l = status.license;
  $("seats").textContent = l ? l.seats_used + " / " + l.seats : "not enforced";
  $("license").textContent = l ? (l.problem ? "problem: " + l.problem : l.organization + ", until " + l.expires) : "not enforced";
  let locks = 0;
  for (const holds of Object.values(status.targets)) locks += holds.length;
  $("n-locks").textContent = locks;
  const down = status.copies.filter((c) => c.scale_down).length;
  $("n-copies").textContent = status.copies.length + " (" + down + ")";
  renderCopies();
  renderSessions();
  renderTargets();
  renderPolicies();
  sample();
}

function renderPolicies() {
  $("policies-scope").textContent = status.policies_scope === "all"
    ? "(all of them, and the profiles)" : "(those that bind you, and the profiles)";
  const body = $("policy-table").tBodies[0];
  body.replaceChildren(...status.policies.map((p) => {
    const tr = el("tr");
    tr.dataset.policy = p.name;
    const state = el("td", p.problem ? "refuses what it binds: " + p.problem : "in force",
      p.problem ? "error" : "");
    tr.append(el("td", p.name), el("td", p.targets), el("td", p.rules || "none"), state);
    return tr;
  }));
}

function renderCopies() {
  const body = $("copies").tBodies[0];
  body.replaceChildren(...status.copies.map((c) => {
    const tr = el("tr");
    tr.append(el("td", c.namespace + "/" + c.original_target), el("td", c.copy_name),
      el("td", c.scale_down ? "yes" : "no"), el("td", c.session_id));
    return tr;
  }));
}

function renderSessions() {
  const q = $("filter").value.trim().toLowerCase();
  const body = $("session-table").tBodies[0];
  const rows = status.sessions.filter((s) => {
    const hay = [s.session_id, s.client_user, s.client_name, s.target, ports(s)].join(" ").toLowerCase();
    return !q || hay.includes(q);
  }).map((s) => {
    const tr = el("tr");
    tr.dataset.session = s.session_id;
    const kill = el("button", "Kill", "kill");
    kill.type = "button";
    kill.setAttribute("aria-label", "Kill session " + s.session_id + " of " + s.client_user);
    kill.addEventListener("click", () => killSession(s.session_id));
    const actions = el("td");
    actions.append(kill);
    tr.append(el("td", s.session_id), el("td", s.client_user + " (" + s.client_name + "@" + s.client_hostname + ")"),
      el("td", s.namespace + "/" + s.target), el("td", ports(s)), el("td", duration(s.duration_secs)),
      el("td", s.requests_stolen + " / " + s.requests_bypassed), actions);
    return tr;
  });
  // Re-rendering must not take keyboard focus away from a Kill button.
  const focused = document.activeElement && document.activeElement.closest("tr[data-session]");
  body.replaceChildren(...rows);
  if (focused) {
    const again = body.querySelector('tr[data-session="' + focused.dataset.session + '"] button');
    if (again) again.focus();
  }
}

function renderTargets() {
  const list = $("target-list");
  const blocks = Object.entries(status.targets).map(([target, holds]) => {
    const div = el("div");
    div.append(el("h3", target));
    const t = el("table");
    const head = el("tr");
    for (const h of ["Port", "Lock", "Filter", "Bypassed", "User", "Session"]) { const th = el("th", h); th.scope = "col"; head.append(th); }
    t.append(head);
    for (const h of holds) {
      const tr = el("tr");
      tr.append(el("td", h.port), el("td", h.lock), el("td", h.filter || "–"),
        el("td", h.bypassed === null ? "–" : h.bypassed), el("td", h.client_user), el("td", h.session_id));
      t.append(tr);
    }
    div.append(t);
    return div;
  });
  if (!blocks.length) blocks.push(el("p", "No port is held.", "muted"));
  list.replaceChildren(...blocks);
}

function sample() {
  const stolen = status.sessions.reduce((a, s) => a + s.requests_stolen, 0);
  push(history.sessions, status.sessions.length);
  push(history.requests, lastStolen === null ? 0 : Math.max(0, stolen - lastStolen));
  lastStolen = stolen;
  chart($("chart-sessions"), history.sessions);
  chart($("chart-requests"), history.requests);
}

function push(arr, v) { arr.push(v); if (arr.length > CHART_POINTS) arr.shift(); }

function chart(svg, values) {
  const max = Math.max(1, ...values);
  const step = 300 / (CHART_POINTS - 1);
  const pts = values.map((v, i) => (i * step).toFixed(1) + "," + (58 - (v / max) * 54).toFixed(1)).join(" ");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", pts);
  const label = document.createElementNS("http://www.w3.org/2000/svg", "text");
  label.setAttribute("x", "4"); label.setAttribute("y", "12"); label.setAttribute("font-size", "10");
  label.textContent = "max " + max;
  svg.replaceChildren(line, label);
}

async function killSession(id) {
  const out = $("kill-result");
  out.className = "";
  const r = await fetch("api/sessions/" + encodeURIComponent(id) + "/kill", {
    method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf },
  });
  const text = await r.text();
  if (r.ok) {
    out.textContent = "Killed session " + id + ".";
  } else {
    out.className = "error";
    out.textContent = "Refused (" + r.status + "): " + text.trim();
  }
  poll();
}

function follow() {
  const src = new EventSource("api/events");
  const list = $("event-list");
  src.onopen = () => { $("feed-state").textContent = "(live)"; };
  src.onerror = () => { $("feed-state").textContent = "(reconnecting…)"; };
  src.addEventListener("gap", (e) => {
    list.prepend(el("li", JSON.parse(e.data).missed + " older events were dropped before they could be shown", "muted"));
  });
  src.onmessage = (e) => {
    const ev = JSON.parse(e.data);
    const li = el("li");
    li.dataset.message = ev.message;
    li.append(el("time", new Date(ev.time_ms).toLocaleTimeString() + " "), el("span", ev.message, "name"));
    const f = ev.fields;
    li.append(el("span", " " + Object.entries(f).map(([k, v]) => k + "=" + v).join(" ")));
    list.prepend(li);
    while (list.children.length > 500) list.lastChild.remove();
    if (/Session (Started|Ended|Killed)|Port /.test(ev.message)) poll();
  };
}

document.addEventListener("DOMContentLoaded", () => {
  $("filter").addEventListener("input", () => status && renderSessions());
  $("logout").addEventListener("click", async () => {
    await fetch("logout", { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf } });
    location.reload();
  });
  poll();
  setInterval(poll, POLL_MS);
  follow();
});
