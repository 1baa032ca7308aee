// The live page of rollout-proxy's admin listener. Polls the rollout API of the listener that
// served it and draws each service's rollout; mutations send the admin token the person typed,
// kept in this tab's sessionStorage only. No dependencies: the charts are plain SVG.
"use strict";

const POLL_MS = 1500;
const TOKEN_KEY = "rollout-proxy.admin-token";
const ERROR_WINDOW = 5; // samples pooled per point of the error-rate charts
const SHARE_WINDOW_S = 60; // the "last min" canary share
const MIN_SPAN_S = 20; // charts show at least this much time
const RESULT_MS = 15000; // how long an action's outcome stays on the card
const SVG = "http://www.w3.org/2000/svg";
const HTTP_NAMES = {
  400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
  409: "Conflict", 503: "Service Unavailable",
};
const ACTIONS = {
  promote: ["Promote", "Move to the next step now, without waiting for evidence."],
  pause: ["Pause", "Freeze automatic moves; a guardrail breach still rolls back."],
  resume: ["Resume", "Let the controller move the rollout on evidence again."],
  abort: ["Abort", "Roll back: every request goes to stable."],
};
const ALLOWED = {
  promote: ["progressing", "paused"],
  pause: ["progressing"],
  resume: ["paused"],
  abort: ["progressing", "paused", "completed"],
};
const STATUS_WORDS = {
  progressing: "progressing", paused: "paused", completed: "completed",
  rolled_back: "rolled back", idle: "idle",
};

const services = new Map(); // name -> view state
let dialogTarget = null; // {name, action} while the token dialog is open

// ---- small helpers --------------------------------------------------------------------------

function $(root, field) {
  return root.querySelector(`[data-field="${field}"]`);
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function count(n) {
  return Math.round(n).toLocaleString("en-US");
}

// Two significant digits rounded as Python's format(x, ".2g") does (the exact binary value,
// ties to even), so that the page's numbers read like the controller's own summaries.
function sig2(x) {
  const [mantissa, exponent] = x.toExponential(25).split("e");
  const digits = mantissa.replace(".", "");
  let lead = Number(digits.slice(0, 2));
  const rest = digits.slice(2);
  const half = "5".padEnd(rest.length, "0");
  if (rest > half || (rest === half && lead % 2 === 1)) lead += 1;
  return Number(`${lead}e${Number(exponent) - 1}`);
}

function pct(rate) {
  if (rate === null || rate === undefined) return "–";
  if (rate === 0) return "0%";
  return `${sig2(rate * 100)}%`;
}

function percent(value) {
  return `${Number(value.toFixed(2))}%`;
}

function rateOf(c) {
  return c.requests ? c.events / c.requests : 0;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), rest = s % 60;
  if (h) return m ? `${h}h ${m}m` : `${h}h`;
  return rest ? `${m}m ${rest}s` : `${m}m`;
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString("en-GB", { hour12: false });
}

function ms(value) {
  if (value === null || value === undefined) return "–";
  return value < 10 ? `${Number(value.toPrecision(2))} ms` : `${Math.round(value)} ms`;
}

function ratio(value) {
  if (value === null || value === undefined || !isFinite(value)) return "∞";
  return `${Number(value.toPrecision(3))}×`;
}

function evalue(value) {
  if (value === null || !isFinite(value)) return "∞"; // JSON has no infinity: null
  if (value < 0.001) return "< 0.001";
  if (value >= 1000) return Math.round(value).toLocaleString("en-US");
  return Number(value.toPrecision(3)).toString();
}

function cohort(step) {
  const who = [...step.tiers, ...step.tenants].join(", ");
  return who || "everyone";
}

// The network failed: no answer at all.
class NetworkError extends Error {}

// The API answered with an error status and its JSON `error` message.
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
  describe() {
    const name = HTTP_NAMES[this.status] || "";
    return `${this.status}${name ? " " + name : ""}: ${this.message}`;
  }
}

async function call(method, path, token) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, { method, headers, cache: "no-store" });
  } catch (error) {
    throw new NetworkError(error.message || String(error));
  }
  let body = {};
  try {
    body = await response.json();
  } catch (_) {
    body = {};
  }
  if (!response.ok) throw new ApiError(response.status, body.error || response.statusText);
  return body;
}

// ---- polling --------------------------------------------------------------------------------

async function poll() {
  try {
    const { services: list } = await call("GET", "/api/v1/services");
    await Promise.all(list.map(refresh));
    dropMissing(new Set(list.map((s) => s.service)));
    if (!list.length) showEmpty("No services are configured.");
    setLive(true, `live · updated ${clock(Date.now() / 1000)}`);
  } catch (error) {
    setLive(false, `${problemWords(error)}; retrying`);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

function problemWords(error) {
  if (error instanceof NetworkError) return `cannot reach the admin API (${error.message})`;
  if (error instanceof ApiError) return `the admin API answered ${error.describe()}`;
  console.error(error);
  return `the page failed: ${error.message || error}`;
}

function setLive(ok, words) {
  const live = document.getElementById("live");
  live.textContent = words;
  live.classList.toggle("down", !ok);
  const problem = document.getElementById("problem");
  problem.hidden = ok;
  if (!ok) problem.textContent = words;
}

function showEmpty(words) {
  const main = document.getElementById("services");
  if (!main.querySelector(".service")) main.replaceChildren(el("p", words, "empty"));
}

function dropMissing(names) {
  for (const [name, view] of services) {
    if (!names.has(name)) {
      view.card.remove();
      services.delete(name);
    }
  }
}

function viewOf(name) {
  let view = services.get(name);
  if (view) return view;
  const main = document.getElementById("services");
  main.querySelector(".empty")?.remove();
  const card = document.getElementById("service-card").content.firstElementChild.cloneNode(true);
  card.dataset.service = name;
  $(card, "name").textContent = name;
  for (const button of card.querySelectorAll(".actions [data-action]")) {
    button.addEventListener("click", () => ask(name, button.dataset.action));
  }
  main.append(card);
  view = { name, card, samples: [], lastT: 0, plan: null, planVersion: -1, meta: null };
  services.set(name, view);
  return view;
}

async function refresh(status) {
  const view = viewOf(status.service);
  const base = `/api/v1/services/${encodeURIComponent(status.service)}`;
  const planFresh = view.plan && view.planVersion === status.version;
  const shadowing = status.step_definition && status.step_definition.shadow > 0;
  const [series, journal, plan, releases, shadow] = await Promise.all([
    call("GET", `${base}/series?since=${view.lastT}`),
    call("GET", `${base}/decisions?limit=20`),
    planFresh ? view.plan : call("GET", `${base}/plan`),
    call("GET", `${base}/releases`),
    shadowing ? call("GET", `${base}/shadow`) : null,
  ]);
  view.plan = plan;
  view.planVersion = status.version;
  view.meta = series;
  keep(view, series.samples);
  render(view, status, journal.decisions);
  renderReleases(view.card, status, releases.releases);
  renderShadow(view.card, shadow);
}

function renderShadow(card, shadow) {
  // A shadow step: the canary answers copies of stable's requests, compared field by field.
  const panel = $(card, "shadow-panel");
  panel.hidden = !shadow;
  if (!shadow) return;
  const results = shadow.results;
  const dropped = Object.entries(results)
    .filter(([name]) => name.startsWith("dropped_"))
    .reduce((sum, [, n]) => sum + n, 0);
  $(card, "shadow-words").textContent =
    `${percent(shadow.sample)} of stable's requests mirrored to the canary · ` +
    `${(results.compared || 0).toLocaleString()} compared · ${dropped.toLocaleString()} dropped · ` +
    `tolerated mismatch rate ${(shadow.tolerance * 100).toFixed(2)}% per route`;
  $(card, "shadow-routes").replaceChildren(...shadow.routes.map((route) => {
    const tr = el("tr");
    const fields = route.paths.map(([path, count]) => `${path} (${count})`).join(", ");
    const verdict = route.shown_over ? " · over" : route.shown_within ? " · within" : "";
    tr.append(el("td", route.route), el("td", route.compared.toLocaleString()),
      el("td", `${(route.mismatch_rate * 100).toFixed(2)}%${verdict}`), el("td", fields || "none"));
    return tr;
  }));
}

function keep(view, fresh) {
  // Two refreshes may overlap (a poll and an action): keep each sample once.
  const newer = fresh.filter((s) => s.t > view.lastT);
  if (newer.length) {
    view.samples.push(...newer);
    view.lastT = newer[newer.length - 1].t;
  }
  const horizon = view.lastT - view.meta.window_s;
  while (view.samples.length && view.samples[0].t <= horizon) view.samples.shift();
}

// ---- rendering ------------------------------------------------------------------------------

function render(view, status, decisions) {
  const card = view.card;
  card.dataset.status = status.status;
  renderHead(card, status);
  renderTimeline(card, status, view.plan);
  renderSplit(card, status, view);
  renderVerdict(card, status, decisions);
  renderCharts(card, view);
  renderJournal(card, decisions);
}

function renderHead(card, status) {
  // A done action's message goes once the rollout has moved on from what it did.
  const result = $(card, "action-result");
  if (result.dataset.version && Number(result.dataset.version) !== status.version) {
    result.hidden = true;
    delete result.dataset.version;
  }
  const badge = $(card, "status");
  badge.textContent = STATUS_WORDS[status.status] || status.status;
  badge.className = `badge status-${status.status}`;
  const step = status.step_definition;
  $(card, "where").textContent = step.baseline
    ? "baseline period: everyone on stable, measuring each tier"
    : step.shadow > 0
      ? `step ${status.step + 1} of ${status.steps}: shadow, ${percent(step.shadow)} of stable's requests mirrored to the canary`
      : `step ${status.step + 1} of ${status.steps}: ${percent(step.percent)} of ${cohort(step)}`;
  const observe = step.observe_s ? ` of ${duration(step.observe_s)} observation` : "";
  $(card, "since").textContent = `${duration(status.time_in_step_s)} in this step${observe}`;
  const stateError = $(card, "state-error");
  stateError.hidden = !status.state_error;
  stateError.textContent = status.state_error || "";
  for (const button of card.querySelectorAll(".actions [data-action]")) {
    button.disabled = !ALLOWED[button.dataset.action].includes(status.status);
  }
}

function renderTimeline(card, status, plan) {
  const items = [];
  if (plan.baseline_s > 0) {
    items.push({ index: -1, title: "baseline", words: `all stable · ${duration(plan.baseline_s)}` });
  }
  plan.steps.forEach((step, i) => {
    const observe = step.observe_s ? ` · ${duration(step.observe_s)}` : "";
    if (step.shadow > 0) {
      items.push({ index: i, title: `${i + 1}. shadow ${percent(step.shadow)}`,
        words: `mirrored, nobody exposed${observe}` });
      return;
    }
    items.push({ index: i, title: `${i + 1}. ${percent(step.percent)}`,
      words: `${cohort(step)}${observe}` });
  });
  const list = $(card, "timeline");
  list.replaceChildren(...items.map((item) => {
    const li = el("li");
    let state = "upcoming";
    if (status.status === "completed" || item.index < status.step) state = "done";
    else if (item.index === status.step) state = status.status === "rolled_back" ? "failed" : "current";
    li.className = state;
    if (state === "current") li.setAttribute("aria-current", "step");
    li.append(el("b", item.title), el("span", item.words));
    const note = { current: status.status === "paused" ? "now · paused" : "now",
      failed: "rolled back here" }[state];
    if (note) li.append(el("em", note));
    return li;
  }));
}

function sumArm(samples, tier, arm) {
  let requests = 0, errors = 0;
  for (const sample of samples) {
    const data = sample.tiers[tier]?.[arm];
    if (data) {
      requests += data.requests;
      errors += data.errors;
    }
  }
  return { requests, errors };
}

function tiersOf(view) {
  const names = new Set(Object.keys(view.plan.tiers));
  for (const sample of view.samples) Object.keys(sample.tiers).forEach((t) => names.add(t));
  return [...names].sort();
}

function comparedWith(view, tier) {
  const last = [...view.samples].reverse().find((s) => s.tiers[tier]);
  const data = last?.tiers[tier];
  if (!data || data.baseline === "none") return "nothing yet";
  if (data.baseline === "stable") return "stable, same time";
  const pre = data.pre_exposure;
  return `pre-exposure: ${pct(pre.error_rate)} of ${count(pre.requests)}`;
}

function renderSplit(card, status, view) {
  $(card, "canary-percent").textContent = percent(status.canary_percent);
  $(card, "canary-bar").style.width = `${Math.min(100, status.canary_percent)}%`;
  const recent = view.samples.filter((s) => s.t > view.lastT - SHARE_WINDOW_S);
  const rows = tiersOf(view).map((tier) => {
    const stable = sumArm(view.samples, tier, "stable");
    const canary = sumArm(view.samples, tier, "canary");
    const nowStable = sumArm(recent, tier, "stable").requests;
    const nowCanary = sumArm(recent, tier, "canary").requests;
    const share = nowStable + nowCanary ? nowCanary / (nowStable + nowCanary) : null;
    const planned = view.plan.tiers[tier];
    const tr = el("tr");
    tr.dataset.tier = tier;
    const cells = [
      ["tier", tier],
      ["planned", planned === undefined ? "–" : percent(planned)],
      ["measured", share === null ? "–" : pct(share)],
      ["stable-requests", count(stable.requests)],
      ["stable-errors", stable.requests ? pct(stable.errors / stable.requests) : "–"],
      ["canary-requests", count(canary.requests)],
      ["canary-errors", canary.requests ? pct(canary.errors / canary.requests) : "–"],
      ["compared", comparedWith(view, tier)],
    ];
    for (const [field, text] of cells) {
      const td = el(field === "tier" ? "th" : "td", text);
      td.dataset.field = field;
      if (field === "stable-errors") td.title = `${count(stable.errors)} errors`;
      if (field === "canary-errors") td.title = `${count(canary.errors)} errors`;
      tr.append(td);
    }
    return tr;
  });
  $(card, "tiers").replaceChildren(...rows);
}

// The verdict shown: the controller's current one, or else the newest journal entry that
// carries evidence (a rollout that is over keeps no live verdict after a restart).
function latestVerdict(status, decisions) {
  if (status.verdict) return { verdict: status.verdict, entry: null };
  const entry = decisions.find((d) => d.evidence && d.evidence.verdict);
  return entry ? { verdict: entry.evidence, entry } : { verdict: null, entry: null };
}

// "latency", or "latency [release 1.4.2]" while a release holds it to its own tolerance.
function isLatency(name) {
  return name === "latency" || name.startsWith("latency [");
}

function checkWords(check) {
  const c = check.canary, b = check.baseline;
  if (isLatency(check.check)) {
    return `${pct(rateOf(c))} of canary requests slower than the tolerated latency vs ` +
      `${pct(rateOf(b))} of baseline requests slower than its own quantile, ` +
      `over ${count(c.requests)} canary requests`;
  }
  const what = check.check === "errors" ? "canary" : `canary on ${check.check.slice(6)}`;
  return `${what} ${pct(rateOf(c))} errors vs ${pct(rateOf(b))} baseline ` +
    `over ${count(c.requests)} requests`;
}

function consequence(verdict, status, decisions) {
  if (status.status === "rolled_back") {
    const last = decisions.find((d) => d.to.status === "rolled_back");
    const by = last && !last.actor.startsWith("controller") ? ` by ${last.actor} (${last.action})` : "";
    return `rolled back${by}`;
  }
  if (status.status === "completed") return "completed";
  if (verdict.verdict === "degraded") return "rolling back";
  if (verdict.verdict === "healthy") {
    if (status.status === "paused") return "within tolerance; paused, so not advancing";
    const left = (status.step_definition.observe_s || 0) - status.time_in_step_s;
    return left > 0 ? `within tolerance; advances in ${duration(left)}` : "within tolerance; advancing";
  }
  const needed = verdict.requests_needed;
  const more = needed > 0 ? ` (about ${count(needed)} more canary requests)` : "";
  return `not enough evidence yet${more}`;
}

function headline(verdict, status, decisions) {
  if (status.step === -1 && status.status !== "rolled_back") {
    return "baseline period: measuring stable traffic; nothing is on the canary yet";
  }
  let numbers;
  if (verdict.check === "guardrail") {
    numbers = verdict.summary.replace(/; evidence .*$/, "");
  } else {
    // A rollback names the check that decided it; otherwise the error rates say the most.
    const decided = verdict.verdict === "degraded" ? verdict.check : "errors";
    const check = verdict.checks.find((c) => c.check === decided) ||
      verdict.checks.find((c) => c.check === "errors");
    numbers = check ? checkWords(check) : verdict.summary;
  }
  return `${numbers}: ${consequence(verdict, status, decisions)}`;
}

function renderVerdict(card, status, decisions) {
  const { verdict, entry } = latestVerdict(status, decisions);
  const badge = $(card, "verdict");
  const words = $(card, "verdict-words");
  const from = $(card, "verdict-from");
  if (!verdict || (status.step === -1 && !entry)) {
    badge.textContent = status.step === -1 ? "baseline" : "none yet";
    badge.className = "badge verdict-none";
    words.textContent = status.step === -1
      ? "baseline period: measuring stable traffic; nothing is on the canary yet"
      : "no verdict yet in this step: the controller judges every analysis interval";
    from.textContent = "";
    $(card, "verdict-summary").textContent = "";
    $(card, "checks").replaceChildren();
    $(card, "tier-evidence").replaceChildren();
    return;
  }
  badge.textContent = verdict.verdict;
  badge.className = `badge verdict-${verdict.verdict}`;
  words.textContent = headline(verdict, status, decisions);
  from.textContent = entry
    ? `from the decision journal: ${entry.action} by ${entry.actor} at ${clock(entry.time)}`
    : `deciding check: ${verdict.check === "all" ? "all checks" : verdict.check}`;
  $(card, "verdict-summary").textContent = verdict.summary;
  $(card, "checks").replaceChildren(...verdict.checks.map(checkRow));
  $(card, "tier-evidence").replaceChildren(...tierEvidence(verdict));
}

function checkRow(check) {
  const tr = el("tr");
  const latency = isLatency(check.check);
  const cells = [
    latency ? check.check.replace("latency", "latency (slow)") : check.check,
    `${pct(rateOf(check.canary))} of ${count(check.canary.requests)}`,
    `${pct(rateOf(check.baseline))} of ${count(check.baseline.requests)}`,
    `${ratio(check.ratio_low)}–${ratio(check.ratio_high)} (≤ ${ratio(check.tolerance)})`,
    `${evalue(check.e_value)} / ${evalue(check.threshold)}${check.crossed ? " ✔" : ""}`,
    `${evalue(check.advance_e_value)} / ${evalue(check.advance_threshold)}` +
      `${check.non_inferior ? " ✔" : ""}`,
  ];
  cells.forEach((text, i) => tr.append(el(i ? "td" : "th", text)));
  if (check.crossed) tr.className = "crossed";
  return tr;
}

function tierEvidence(verdict) {
  const errors = verdict.checks.find((c) => c.check === "errors");
  if (!errors) return [];
  return errors.tiers.map((t) => {
    const source = {
      concurrent: "its stable traffic at the same time",
      pre_exposure: "its pre-exposure baseline (stable traffic before it was exposed)",
      none: "nothing: no evidence from this tier",
    }[t.source] || t.source;
    return el("li",
      `${t.tier}: canary ${pct(rateOf(t.canary))} errors of ${count(t.canary.requests)}, ` +
      `compared with ${source}: ${pct(rateOf(t.baseline))} of ${count(t.baseline.requests)}` +
      ` · ${pct(t.share)} of the tier on the canary`);
  });
}

// The release in progress beside its verdict, and the service's releases, newest first.
function changeCell(change) {
  const td = el("td");
  const words = change.summary || change.commit || "";
  if (change.url) {
    const link = el("a", words || change.url);
    link.href = change.url;
    link.rel = "noopener";
    td.append(link);
  } else {
    td.textContent = words;
  }
  return td;
}

function renderReleases(card, status, releases) {
  const current = $(card, "release");
  const release = status.release;
  current.hidden = !release;
  if (release) {
    const change = release.change || {};
    const words = change.summary || change.commit || "no change summary";
    current.textContent = `release ${release.version} (${release.status}) by ${release.actor}: ${words}`;
  }
  $(card, "releases-panel").hidden = !releases.length;
  $(card, "releases").replaceChildren(...releases.map((r) => {
    const tr = el("tr");
    tr.dataset.release = r.status;
    const took = r.duration_s === null ? "running" : duration(r.duration_s);
    tr.append(el("td", r.version), changeCell(r.change || {}), el("td", r.actor),
      el("td", r.outcome || r.status), el("td", took));
    return tr;
  }));
}

function renderJournal(card, decisions) {
  const where = (status, step) => `${STATUS_WORDS[status] || status}` +
    (step < 0 ? ", baseline" : `, step ${step + 1}`);
  $(card, "journal").replaceChildren(...decisions.map((d) => {
    const tr = el("tr");
    tr.dataset.decision = d.action;
    const reason = el("td", d.reason, "reason");
    reason.title = d.reason;
    const time = el("td", clock(d.time));
    time.title = new Date(d.time * 1000).toString();
    tr.append(time, el("td", d.actor), el("td", d.action, `action action-${d.action}`),
      el("td", where(d.from.status, d.from.step)), el("td", where(d.to.status, d.to.step)),
      reason);
    return tr;
  }));
}

// ---- charts ---------------------------------------------------------------------------------

function renderCharts(card, view) {
  const box = $(card, "charts");
  const tiers = tiersOf(view).filter((t) => view.samples.some((s) => s.tiers[t]));
  if (!tiers.length) {
    box.replaceChildren(el("p", "No traffic yet: the charts start with the first requests.", "empty"));
    return;
  }
  const width = Math.max(260, Math.floor((box.clientWidth - 32) / 2));
  const t1 = view.lastT;
  const t0 = Math.min(t1 - MIN_SPAN_S, view.samples[0].t);
  const markers = changes(view.samples);
  const quantile = `p${Number((view.meta.latency_quantile * 100).toPrecision(3))}`;
  box.replaceChildren(...tiers.map((tier) => {
    const row = el("div", null, "chart-row");
    row.dataset.tier = tier;
    row.append(el("h4", `tier ${tier}`));
    const errors = errorSeries(view.samples, tier);
    const latency = latencySeries(view.samples, tier, quantile);
    row.append(
      chart(`error rate (${ERROR_WINDOW * view.meta.interval_s} s windows)`, errors, pct,
        { width, t0, t1, markers, floor: 0.01 }),
      chart("latency p99", latency, ms, { width, t0, t1, markers, floor: 1 }),
    );
    return row;
  }));
}

// Where the rollout's step or status changed between samples: vertical markers.
function changes(samples) {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i];
    if (a.status !== b.status) {
      out.push({ t: b.t, label: STATUS_WORDS[b.status] || b.status, kind: b.status });
    } else if (a.step !== b.step) {
      out.push({ t: b.t, label: b.step < 0 ? "baseline" : `step ${b.step + 1}`, kind: "step" });
    }
  }
  return out;
}

function errorSeries(samples, tier) {
  const canary = [], stable = [], pre = [];
  for (let i = 0; i < samples.length; i++) {
    const window = samples.slice(Math.max(0, i - ERROR_WINDOW + 1), i + 1);
    const data = samples[i].tiers[tier];
    const pooled = (arm, want) => {
      let requests = 0, errors = 0;
      for (const s of window) {
        const d = s.tiers[tier];
        if (d && d[arm] && (!want || d.baseline === want)) {
          requests += d[arm].requests;
          errors += d[arm].errors;
        }
      }
      return requests ? errors / requests : null;
    };
    const t = samples[i].t;
    canary.push([t, data && data.canary.requests ? pooled("canary") : null]);
    stable.push([t, data && data.baseline === "stable" ? pooled("stable", "stable") : null]);
    pre.push([t, data && data.baseline === "pre_exposure" ? data.pre_exposure.error_rate : null]);
  }
  return [
    { name: "canary", points: canary, cls: "canary" },
    { name: "baseline", points: stable, cls: "baseline" },
    { name: "pre-exposure", points: pre, cls: "pre" },
  ];
}

function latencySeries(samples, tier, quantile) {
  const arm = (name, field) => samples.map((s) => {
    const d = s.tiers[tier];
    if (!d || !d[name] || !d[name].requests) return [s.t, null];
    if (name === "stable" && d.baseline !== "stable") return [s.t, null];
    return [s.t, d[name][field]];
  });
  const pre = samples.map((s) => {
    const d = s.tiers[tier];
    return [s.t, d && d.baseline === "pre_exposure" ? d.pre_exposure.latency_ms : null];
  });
  return [
    { name: "canary p50", points: arm("canary", "p50_ms"), cls: "canary thin" },
    { name: "baseline p50", points: arm("stable", "p50_ms"), cls: "baseline thin" },
    { name: "canary p99", points: arm("canary", "p99_ms"), cls: "canary" },
    { name: "baseline p99", points: arm("stable", "p99_ms"), cls: "baseline" },
    { name: `pre-exposure ${quantile}`, points: pre, cls: "pre" },
  ];
}

// About four round ticks from 0 to at least `value` (and at least `floor`).
function niceScale(value, floor) {
  const top = Math.max(value, floor);
  const raw = top / 4;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw);
  return { step, max: step * Math.ceil(top / step - 1e-9) };
}

function chart(title, series, format, { width, t0, t1, markers, floor }) {
  const height = 170, left = 52, right = 10, top = 18, bottom = 22;
  const values = series.flatMap((s) => s.points.map((p) => p[1])).filter((v) => v !== null);
  const scale = niceScale(values.length ? Math.max(...values) : 0, floor);
  const yMax = scale.max;
  const x = (t) => left + ((t - t0) / Math.max(1, t1 - t0)) * (width - left - right);
  const y = (v) => top + (1 - v / yMax) * (height - top - bottom);
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "chart",
    role: "img", "aria-label": title });
  root.append(svg("text", { x: left, y: 12, class: "title" }, title));
  for (let i = 0; i * scale.step <= yMax * (1 + 1e-9); i++) {
    const v = i * scale.step;
    root.append(svg("line", { x1: left, x2: width - right, y1: y(v), y2: y(v), class: "grid" }));
    root.append(svg("text", { x: left - 6, y: y(v) + 4, class: "tick y" }, format(v)));
  }
  for (let i = 0; i <= 3; i++) {
    const t = t0 + ((t1 - t0) * i) / 3;
    root.append(svg("text", { x: x(t), y: height - 6, class: `tick x${i === 0 ? " first" : i === 3 ? " last" : ""}` }, clock(t)));
  }
  const taken = [[], [], []]; // per label row: the [from, to] spans already used
  for (const marker of markers) {
    if (marker.t < t0) continue;
    const at = x(marker.t);
    root.append(svg("line", { x1: at, x2: at, y1: top, y2: height - bottom,
      class: `marker ${marker.kind}` }));
    // Beside the line, on its left near the right edge, on the first row where it fits.
    const size = marker.label.length * 5.6 + 4;
    const flip = at + size > width - right;
    const span = flip ? [at - size, at] : [at, at + size];
    const row = Math.max(0, taken.findIndex((used) =>
      used.every(([a, b]) => span[1] < a || span[0] > b)));
    taken[row].push(span);
    root.append(svg("text", { x: flip ? at - 3 : at + 3, y: top + 9 + 11 * row,
      "text-anchor": flip ? "end" : "start", class: `marker-label ${marker.kind}` },
      marker.label));
  }
  for (const s of series) {
    const d = path(s.points, x, y);
    if (d) root.append(svg("path", { d, class: `line ${s.cls}` }));
  }
  hover(root, series, format, x, { left, right, top, bottom, width, height });
  return root;
}

function path(points, x, y) {
  let d = "", pen = false;
  for (const [t, v] of points) {
    if (v === null || v === undefined) {
      pen = false;
      continue;
    }
    d += `${pen ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
    pen = true;
  }
  return d;
}

// A readout of the values at the pointer's time.
function hover(root, series, format, x, box) {
  const guide = svg("line", { y1: box.top, y2: box.height - box.bottom, class: "guide" });
  const label = svg("text", { y: box.top + 22, class: "readout" });
  guide.style.display = "none";
  label.style.display = "none";
  root.append(guide, label);
  const times = series[0].points.map((p) => p[0]);
  root.addEventListener("mousemove", (event) => {
    const px = event.offsetX;
    let best = 0;
    times.forEach((t, i) => { if (Math.abs(x(t) - px) < Math.abs(x(times[best]) - px)) best = i; });
    if (!times.length) return;
    const parts = series.map((s) => [s.name, s.points[best][1]]).filter(([, v]) => v !== null);
    const at = x(times[best]);
    guide.setAttribute("x1", at);
    guide.setAttribute("x2", at);
    label.textContent = `${clock(times[best])} · ${parts.map(([n, v]) => `${n} ${format(v)}`).join(" · ")}`;
    const right = at > box.width / 2;
    label.setAttribute("x", right ? at - 6 : at + 6);
    label.setAttribute("text-anchor", right ? "end" : "start");
    guide.style.display = "";
    label.style.display = "";
  });
  root.addEventListener("mouseleave", () => {
    guide.style.display = "none";
    label.style.display = "none";
  });
}

// ---- actions --------------------------------------------------------------------------------

function ask(name, action) {
  const [verb, what] = ACTIONS[action];
  dialogTarget = { name, action };
  document.getElementById("act-title").textContent = `${verb} ${name}?`;
  document.getElementById("act-what").textContent = what;
  document.getElementById("act-go").textContent = verb;
  const input = document.getElementById("act-token");
  input.value = sessionStorage.getItem(TOKEN_KEY) || "";
  const error = document.getElementById("act-error");
  error.hidden = true;
  error.textContent = "";
  document.getElementById("act-dialog").showModal();
  (input.value ? document.getElementById("act-go") : input).focus();
}

function dialogError(words) {
  const error = document.getElementById("act-error");
  error.textContent = words;
  error.hidden = false;
}

async function submit(event) {
  event.preventDefault();
  if (!dialogTarget) return;
  const { name, action } = dialogTarget;
  const token = document.getElementById("act-token").value.trim();
  if (!token) {
    dialogError("Enter the admin token (the value of the variable named by admin.token_env).");
    return;
  }
  const go = document.getElementById("act-go");
  go.disabled = true;
  const result = $(services.get(name).card, "action-result");
  try {
    const status = await call("POST", `/api/v1/services/${encodeURIComponent(name)}/${action}`, token);
    sessionStorage.setItem(TOKEN_KEY, token);
    document.getElementById("act-dialog").close();
    dialogTarget = null;
    showResult(result, `${ACTIONS[action][0]}: done at ${clock(Date.now() / 1000)}; ` +
      `now ${STATUS_WORDS[status.status] || status.status}`, false);
    result.dataset.version = status.version;
    await refresh(status);
  } catch (error) {
    const words = error instanceof ApiError ? error.describe() : problemWords(error);
    if (error.status === 401 || error.status === 403) sessionStorage.removeItem(TOKEN_KEY);
    dialogError(words);
    showResult(result, `${ACTIONS[action][0]} refused: ${words}`, true);
    delete result.dataset.version;
  } finally {
    go.disabled = false;
    showTokenState();
  }
}

// An action's outcome, shown until the next action or for RESULT_MS.
function showResult(node, words, failed) {
  node.textContent = words;
  node.classList.toggle("failed", failed);
  node.hidden = false;
  clearTimeout(node.hideTimer);
  node.hideTimer = setTimeout(() => { node.hidden = true; }, RESULT_MS);
}

function showTokenState() {
  document.getElementById("token-state").hidden = !sessionStorage.getItem(TOKEN_KEY);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("act-form").addEventListener("submit", submit);
  document.getElementById("act-cancel").addEventListener("click", () => {
    dialogTarget = null;
    document.getElementById("act-dialog").close();
  });
  document.getElementById("forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showTokenState();
  });
  showTokenState();
  poll();
});
