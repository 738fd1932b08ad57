// The explorer: screens, filters, heatmaps, per-user table, comparison, export.
// Every figure on the page comes from the HeatmapService RPCs (js/api.js);
// drawing follows the shared spec (js/draw.js).

import { RpcError, base64ToBytes, call, queryHeatmap } from "./api.js";
import {
  DEFAULT_ASPECT,
  VIRIDIS,
  cellsFrom,
  density,
  diffPixels,
  divergingGradient,
  fitSize,
  heatPixels,
  rampGradient,
} from "./draw.js";
import {
  DEFAULTS,
  GRID_SIZES,
  PRESETS,
  isPerUser,
  queryRequest,
  readState,
  rfc3339ToLocal,
  selectedTypes,
  timeRange,
  writeState,
} from "./state.js";

const TOKEN_KEY = "heatmap.explorer.token";
const $ = (selector) => document.querySelector(selector);
const fmt = (n) => Number(n).toLocaleString("en-US");

let state = readState(location.search);
let token = "";
let screens = []; // [{name, count, hasScreenshot}]
let screenshots = []; // ListScreenshots of the current screen, newest first
let screenshotsFor = null;
const backdrops = new Map(); // screenshot id -> ImageBitmap
let generation = 0;
let inflight = null;
let lastResult = null; // what the views show, for redraws and hover

// Tests and the bench wait on this: `drawn` counts settled refreshes.
const probe = {
  drawn: 0,
  busy: false,
  last: null,
  waiters: [],
  whenDrawn(n) {
    if (this.drawn >= n) return Promise.resolve(this.last);
    return new Promise((resolve) => this.waiters.push({ n, resolve }));
  },
};
window.__heatmap = probe;

function settled(outcome) {
  probe.busy = false;
  probe.drawn += 1;
  probe.last = outcome;
  $("#views").dataset.drawn = String(probe.drawn);
  $("#views").dataset.outcome = outcome.kind;
  probe.waiters = probe.waiters.filter((w) => {
    if (probe.drawn < w.n) return true;
    w.resolve(outcome);
    return false;
  });
}

// ---------------------------------------------------------------- sign-in

function claims(jwt) {
  try {
    const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
  } catch {
    return {};
  }
}

function showSignIn(message) {
  token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  $("#app").hidden = true;
  $("#sign-out").hidden = true;
  $("#whoami").textContent = "";
  $("#signin").hidden = false;
  $("#signin-message").textContent = message ?? "";
  $("#token-input").focus();
  settled({ kind: "signin", message: message ?? "" });
}

async function signIn(newToken) {
  token = newToken.trim().replace(/^Bearer\s+/i, "");
  sessionStorage.setItem(TOKEN_KEY, token);
  $("#signin").hidden = true;
  $("#app").hidden = false;
  $("#sign-out").hidden = false;
  const sub = claims(token).sub;
  $("#whoami").textContent = sub ? `Signed in as ${sub}` : "Signed in";
  if (state.screen) {
    loadScreens();
    refresh();
    return;
  }
  // No screen in the link: open on the busiest one (the list is by touches),
  // so a first visit shows a heatmap rather than an empty frame.
  await loadScreens();
  if (!state.screen && screens.length) {
    state = { ...state, screen: screens[0].name };
    history.replaceState(null, "", location.pathname + writeState(state));
    renderScreens();
  }
  refresh();
}

function handleError(err) {
  if (err instanceof RpcError && err.isAuth) {
    showSignIn("Your token has expired or is not valid. Paste a new one to sign in again.");
    return true;
  }
  return false;
}

function describe(err) {
  if (!(err instanceof RpcError)) return `Something went wrong: ${err.message}`;
  if (err.isDown) return "The query service is not reachable right now. Check that it runs, then retry.";
  if (err.code === "permission_denied") return "This token may not view heatmaps (it needs VIEW_HEATMAPS).";
  if (err.code === "resource_exhausted") return `Too much data for this view: ${err.message}`;
  return `${err.code}: ${err.message}`;
}

// ---------------------------------------------------------------- controls

function fillControls() {
  const range = $("#range");
  range.replaceChildren(
    ...Object.entries(PRESETS).map(([value, p]) => new Option(p.label, value)),
  );
  $("#grid").replaceChildren(...GRID_SIZES.map((g) => new Option(`${g} × ${g}`, String(g))));
  $("#legend-a .ramp").style.background = rampGradient(VIRIDIS);
  $("#legend-b .ramp").style.background = rampGradient(VIRIDIS);
  $("#legend-diff .ramp").style.background = divergingGradient();
}

function syncControls() {
  $("#range").value = state.range;
  $("#custom-range").hidden = state.range !== "custom";
  $("#from").value = state.from;
  $("#to").value = state.to;
  $("#campaign").value = state.campaign;
  const types = selectedTypes(state);
  for (const box of document.querySelectorAll('input[name="etype"]')) box.checked = types.includes(box.value);
  $("#grid").value = String(state.grid);
  for (const radio of document.querySelectorAll('input[name="mode"]')) radio.checked = radio.value === state.mode;
  $("#top-label").hidden = state.mode !== "user";
  $("#top").value = String(state.top);
  $("#compare").value = state.cmp;
  $("#compare-period").hidden = state.cmp !== "period";
  $("#compare-campaign").hidden = state.cmp !== "campaign";
  $("#bfrom").value = state.bfrom;
  $("#bto").value = state.bto;
  $("#bcampaign").value = state.bcampaign;
  const backdrop = $("#backdrop");
  if ([...backdrop.options].some((o) => o.value === state.shot)) backdrop.value = state.shot;
}

function update(changes, { screensToo = false } = {}) {
  state = { ...state, ...changes };
  history.replaceState(null, "", location.pathname + writeState(state));
  $("#link").hidden = true;
  syncControls();
  if (screensToo) loadScreens();
  refresh();
}

function bindControls() {
  $("#range").addEventListener("change", (e) => {
    const changes = { range: e.target.value };
    if (e.target.value === "custom" && !state.from) {
      // Start the custom range from what the preset showed.
      const { start } = timeRange(state);
      const now = Math.floor(Date.now() / 3_600_000) * 3_600_000;
      changes.from = rfc3339ToLocal(start ? Date.parse(start) : now - 7 * 86_400_000);
      changes.to = rfc3339ToLocal(now + 3_600_000);
    }
    update(changes, { screensToo: true });
  });
  $("#from").addEventListener("change", (e) => update({ from: e.target.value }, { screensToo: true }));
  $("#to").addEventListener("change", (e) => update({ to: e.target.value }, { screensToo: true }));
  $("#campaign").addEventListener("change", (e) =>
    update({ campaign: e.target.value.trim() }, { screensToo: true }),
  );
  for (const box of document.querySelectorAll('input[name="etype"]')) {
    box.addEventListener("change", () => {
      const types = [...document.querySelectorAll('input[name="etype"]:checked')].map((b) => b.value);
      update({ types: types.join(",") });
    });
  }
  $("#grid").addEventListener("change", (e) => update({ grid: Number(e.target.value) }));
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", (e) => update({ mode: e.target.value, user: "" }));
  }
  $("#top").addEventListener("change", (e) => {
    const top = Math.min(1000, Math.max(1, Math.round(Number(e.target.value) || DEFAULTS.top)));
    update({ top });
  });
  $("#compare").addEventListener("change", (e) => {
    const changes = { cmp: e.target.value };
    if (e.target.value === "period" && !state.bfrom) {
      // Default B: the period of the same length just before A.
      const { start, end } = timeRange(state);
      const endMs = end ? Date.parse(end) : Math.floor(Date.now() / 3_600_000) * 3_600_000 + 3_600_000;
      const startMs = start ? Date.parse(start) : endMs - 7 * 86_400_000;
      changes.bfrom = rfc3339ToLocal(startMs - (endMs - startMs));
      changes.bto = rfc3339ToLocal(startMs);
    }
    update(changes);
  });
  $("#bfrom").addEventListener("change", (e) => update({ bfrom: e.target.value }));
  $("#bto").addEventListener("change", (e) => update({ bto: e.target.value }));
  $("#bcampaign").addEventListener("change", (e) => update({ bcampaign: e.target.value.trim() }));
  $("#backdrop").addEventListener("change", (e) => update({ shot: e.target.value }));
  $("#screen-search").addEventListener("input", renderScreens);
  $("#screen-search").addEventListener("keydown", (e) => {
    // Also opens a screen the list does not show (e.g. no events in the range).
    if (e.key === "Enter" && e.target.value.trim()) pickScreen(e.target.value.trim());
  });
  $("#signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if ($("#token-input").value.trim()) signIn($("#token-input").value);
  });
  $("#sign-out").addEventListener("click", () => showSignIn("Signed out."));
  $("#copy-link").addEventListener("click", copyLink);
  $("#export").addEventListener("click", exportPng);
  for (const id of ["a", "b", "diff"]) {
    const canvas = $(`#heat-${id}`);
    canvas.addEventListener("mousemove", (e) => hover(id, e));
    canvas.addEventListener("mouseleave", () => {
      $("#hover-info").textContent = "Hover the heatmap to see a cell's count.";
    });
  }
  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => lastResult && drawResult(lastResult), 120);
  });
}

// ---------------------------------------------------------------- screens

async function loadScreens() {
  const { start, end } = timeRange(state);
  const request = {};
  if (start) request.startTime = start;
  if (end) request.endTime = end;
  if (state.campaign) request.campaignId = state.campaign;
  request.limit = 1000;
  $("#screens-status").textContent = "Loading screens…";
  try {
    const reply = await call("ListScreens", request, token);
    screens = (reply.screens ?? []).map((s) => ({
      name: s.screenName,
      count: Number(s.eventCount ?? 0),
      hasScreenshot: Boolean(s.hasScreenshot),
    }));
    $("#screens-status").textContent = !screens.length
      ? "No screen has touches in this time range."
      : reply.truncated
        ? `The ${fmt(screens.length)} screens with the most touches; search to narrow.`
        : "";
  } catch (err) {
    if (handleError(err)) return;
    screens = [];
    $("#screens-status").textContent = describe(err);
  }
  renderScreens();
}

function renderScreens() {
  const needle = $("#screen-search").value.trim().toLowerCase();
  const items = screens
    .filter((s) => s.name.toLowerCase().includes(needle))
    .map((s) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.screen = s.name;
      button.setAttribute("aria-current", String(s.name === state.screen));
      button.setAttribute("aria-label", `${s.name}, ${fmt(s.count)} touches`);
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = s.hasScreenshot ? `${s.name} ▣` : s.name;
      const count = document.createElement("span");
      count.className = "count";
      count.textContent = fmt(s.count);
      button.append(name, count);
      button.addEventListener("click", () => pickScreen(s.name));
      li.append(button);
      return li;
    });
  $("#screen-list").replaceChildren(...items);
}

function pickScreen(name) {
  update({ screen: name, shot: "", user: "" });
  renderScreens();
}

// ---------------------------------------------------------------- backdrops

async function loadScreenshots(signal) {
  if (screenshotsFor === state.screen) return;
  const reply = await call("ListScreenshots", { screenName: state.screen }, token, signal);
  screenshots = reply.screenshots ?? [];
  screenshotsFor = state.screen;
  const options = [new Option(screenshots.length ? "Newest screenshot" : "No screenshot uploaded", "")];
  for (const shot of screenshots) {
    const when = shot.uploadedAt ? shot.uploadedAt.slice(0, 16).replace("T", " ") : "?";
    options.push(new Option(`${when} UTC · ${shot.width}×${shot.height}`, shot.screenshotId));
  }
  if (screenshots.length) options.push(new Option("No backdrop", "none"));
  $("#backdrop").replaceChildren(...options);
  syncControls();
}

function chosenScreenshot() {
  if (state.shot === "none") return null;
  if (state.shot) return screenshots.find((s) => s.screenshotId === state.shot) ?? null;
  return screenshots[0] ?? null;
}

async function backdropImage(shot, signal) {
  if (!shot) return null;
  const cached = backdrops.get(shot.screenshotId);
  if (cached) return cached;
  const reply = await call("GetScreenshot", { screenshotId: shot.screenshotId }, token, signal);
  const blob = new Blob([base64ToBytes(reply.imageData)], { type: "image/png" });
  const image = await createImageBitmap(blob);
  backdrops.set(shot.screenshotId, image);
  return image;
}

// ---------------------------------------------------------------- refresh

function setStatus(kind, text, retry = false) {
  const status = $("#status");
  status.dataset.kind = kind;
  status.replaceChildren(document.createTextNode(text));
  if (retry) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Retry";
    button.style.marginLeft = "0.6rem";
    button.addEventListener("click", () => {
      loadScreens();
      refresh();
    });
    status.append(button);
  }
}

function sideLabel(side) {
  if (state.cmp === "campaign") {
    const campaign = side === "A" ? state.campaign : state.bcampaign;
    return `${side}: ${campaign ? `campaign ${campaign}` : "all campaigns"}`;
  }
  if (state.cmp === "period") {
    const request = queryRequest(state, side);
    const a = request.startTime ? request.startTime.slice(0, 13).replace("T", " ") + "h" : "start";
    const b = request.endTime ? request.endTime.slice(0, 13).replace("T", " ") + "h" : "now";
    return `${side}: ${a} → ${b}`;
  }
  return "";
}

async function refresh() {
  const mine = ++generation;
  const startedAt = performance.now();
  inflight?.abort();
  const controller = new AbortController();
  inflight = controller;
  const signal = controller.signal;
  syncControls();
  $("#view-title").textContent = state.screen || "Pick a screen";
  if (!token) return;
  if (!state.screen) {
    setStatus("empty", "Pick a screen from the list (or type its name and press Enter).");
    $("#export").disabled = true;
    $("#users").hidden = true;
    lastResult = null;
    clearViews();
    settled({ kind: "noscreen" });
    return;
  }
  if (!selectedTypes(state).length) {
    setStatus("empty", "Pick at least one event type.");
    lastResult = null;
    clearViews();
    settled({ kind: "empty", totalA: 0 });
    return;
  }
  setStatus("loading", "Loading…");
  probe.busy = true;
  $("#views").setAttribute("aria-busy", "true");
  try {
    await loadScreenshots(signal);
    const shot = chosenScreenshot();
    const requests = [queryHeatmap(queryRequest(state, "A"), token, signal)];
    if (state.cmp !== "off") requests.push(queryHeatmap(queryRequest(state, "B"), token, signal));
    const [image, replyA, replyB] = await Promise.all([backdropImage(shot, signal), ...requests]);
    if (mine !== generation) return;
    let userReply = null;
    if (isPerUser(state)) {
      const users = replyA.userTouchCounts ?? [];
      const user = state.user || users[0]?.userId || "";
      const hasPoints = (replyA.dataPoints ?? []).some((p) => p.userId === user);
      if (user && !hasPoints) {
        // A user outside the top N (e.g. from a link): ask for that user alone.
        const request = { ...queryRequest(state, "A"), mode: "ALL_USERS", userId: user };
        delete request.topUsers;
        userReply = await queryHeatmap(request, token, signal);
        if (mine !== generation) return;
      }
    }
    lastResult = { shot, image, replyA, replyB: replyB ?? null, userReply };
    drawResult(lastResult, { startedAt, repliedAt: performance.now() });
  } catch (err) {
    if (err.name === "AbortError" || mine !== generation) return;
    $("#views").removeAttribute("aria-busy");
    if (handleError(err)) return;
    setStatus("error", describe(err), true);
    $("#export").disabled = true;
    settled({ kind: "error", code: err.code ?? "unknown", message: err.message });
  }
}

function clearViews() {
  $("#views").removeAttribute("aria-busy");
  $("#view-b").hidden = true;
  $("#view-diff").hidden = true;
  for (const id of ["a", "b", "diff"]) {
    const heat = $(`#heat-${id}`);
    heat.getContext("2d").clearRect(0, 0, heat.width, heat.height);
  }
}

function viewBox(count) {
  const views = $("#views");
  const gap = 16;
  const total = views.clientWidth || document.documentElement.clientWidth - 32;
  const narrow = total < 700;
  const perRow = narrow ? 1 : count;
  const maxWidth = Math.max(120, (total - gap * (perRow - 1)) / perRow - 2);
  // Room under the view for its legend and the hover line.
  const maxHeight = narrow ? Infinity : Math.max(320, window.innerHeight - 240);
  return { maxWidth: Math.min(maxWidth, 560), maxHeight };
}

function paintStage(id, image, size) {
  const figure = $(`#view-${id}`);
  const [back, heat] = figure.querySelectorAll("canvas");
  for (const canvas of [back, heat]) {
    canvas.width = size.width;
    canvas.height = size.height;
    canvas.style.width = `${size.width}px`;
    canvas.style.height = `${size.height}px`;
  }
  const ctx = back.getContext("2d");
  ctx.clearRect(0, 0, size.width, size.height);
  if (image) {
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(image, 0, 0, size.width, size.height);
  } else {
    ctx.fillStyle = "#f5f5f5";
    ctx.fillRect(0, 0, size.width, size.height);
  }
  figure.querySelector(".legend").style.width = `${size.width}px`;
  return heat.getContext("2d");
}

function sideView(id, reply, grid, size, image, userId) {
  const cells = cellsFrom(reply.dataPoints ?? [], grid, userId);
  // total_count also holds the touches of cells k-anonymity left out.
  const drawnTotal = cells.reduce((sum, c) => sum + c.count, 0);
  const total = userId ? drawnTotal : Number(reply.totalCount ?? drawnTotal);
  const suppressed = Number(reply.suppressedCount ?? 0);
  const maxCell = cells.reduce((m, c) => Math.max(m, c.count), 0);
  const ctx = paintStage(id, image, size);
  const dens = density(cells, grid, size.width, size.height);
  ctx.putImageData(heatPixels(dens, size.width, size.height), 0, 0);
  const figure = $(`#view-${id}`);
  figure.dataset.total = String(total);
  figure.dataset.maxCell = String(maxCell);
  figure.querySelector(".hi").textContent = `${fmt(maxCell)} / cell`;
  figure.dataset.suppressed = String(suppressed);
  return { cells, total, suppressed, users: userId ? 1 : Number(reply.uniqueUsers ?? 0), maxCell, dens, byCell: new Map(cells.map((c) => [c.iy * grid + c.ix, c.count])) };
}

function summary(side) {
  const parts = [`${fmt(side.total)} touches`];
  if (side.users > 1) parts.push(`${fmt(side.users)} users`);
  if (side.suppressed) parts.push(`${fmt(side.suppressed)} in cells with too few users not drawn`);
  return parts.join(", ");
}

function drawResult(result, timing = null) {
  const { shot, image, replyA, replyB, userReply } = result;
  const grid = Number(replyA.gridSize) || state.grid;
  const aspect = shot ? shot.height / shot.width : DEFAULT_ASPECT;
  const comparing = replyB !== null;
  const box = viewBox(comparing ? 3 : 1);
  const size = fitSize(box.maxWidth, box.maxHeight, aspect);
  $("#view-b").hidden = !comparing;
  $("#view-diff").hidden = !comparing;

  let userId = "";
  let replyShown = replyA;
  if (isPerUser(state)) {
    userId = state.user || replyA.userTouchCounts?.[0]?.userId || "";
    if (userReply) {
      replyShown = userReply;
      userId = "";
    }
  }
  const a = sideView("a", replyShown, grid, size, image, userId);
  result.views = { a, grid, size };
  const who = isPerUser(state) && (userId || userReply) ? `User ${state.user || userId}` : "";
  $("#caption-a").textContent = [comparing ? sideLabel("A") : who, summary(a)].filter(Boolean).join(" · ");
  if (comparing) {
    const b = sideView("b", replyB, grid, size, image, "");
    $("#caption-b").textContent = `${sideLabel("B")} · ${summary(b)}`;
    const ctx = paintStage("diff", image, size);
    const { pixels, peak } = diffPixels(a.dens, b.dens, size.width, size.height);
    ctx.putImageData(pixels, 0, 0);
    // Cell counts under the legend's ends: the largest cell difference each way.
    let aMore = 0;
    let bMore = 0;
    for (const key of new Set([...a.byCell.keys(), ...b.byCell.keys()])) {
      const d = (a.byCell.get(key) ?? 0) - (b.byCell.get(key) ?? 0);
      aMore = Math.max(aMore, d);
      bMore = Math.max(bMore, -d);
    }
    $("#legend-diff .lo").textContent = `B +${fmt(bMore)}`;
    $("#legend-diff .hi").textContent = `A +${fmt(aMore)}`;
    $("#view-diff").dataset.peak = String(peak);
    result.views.b = b;
  }
  renderUsers(replyA, userId || state.user);
  $("#views").removeAttribute("aria-busy");
  $("#export").disabled = false;
  const empty = comparing ? a.total === 0 && result.views.b.total === 0 : a.total === 0;
  if (empty) {
    setStatus("empty", `No touches on ${state.screen} for these filters.`);
  } else {
    const total = Number(replyA.totalCount ?? a.total);
    setStatus("ok", isPerUser(state) ? `${fmt(total)} touches by the users listed` : "");
  }
  settled({
    kind: empty ? "empty" : "drawn",
    totalA: a.total,
    totalB: comparing ? result.views.b.total : null,
    width: size.width,
    height: size.height,
    // Where a refresh's time went (the bench reports it): RPCs, then drawing.
    rpcMs: timing ? timing.repliedAt - timing.startedAt : null,
    drawMs: timing ? performance.now() - timing.repliedAt : null,
  });
}

// ---------------------------------------------------------------- users

function renderUsers(reply, selected) {
  const section = $("#users");
  section.hidden = !isPerUser(state);
  if (section.hidden) return;
  const users = reply.userTouchCounts ?? [];
  const total = Number(reply.totalTouches ?? reply.totalCount ?? 0);
  const userCount = Number(reply.totalUsers ?? users.length);
  $("#users-summary").textContent =
    `Top ${fmt(users.length)} of ${fmt(userCount)} users · ${fmt(total)} touches in all. Click a user to see their heatmap.`;
  const rows = users.map((u, i) => {
    const tr = document.createElement("tr");
    tr.setAttribute("aria-selected", String(u.userId === selected));
    const rank = document.createElement("td");
    rank.textContent = String(i + 1);
    const name = document.createElement("td");
    name.className = "user";
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = u.userId;
    button.addEventListener("click", () => update({ user: u.userId }));
    name.append(button);
    const count = document.createElement("td");
    count.textContent = fmt(u.touchCount ?? 0);
    const share = document.createElement("td");
    share.textContent = total ? `${((Number(u.touchCount ?? 0) / total) * 100).toFixed(1)} %` : "–";
    tr.append(rank, name, count, share);
    return tr;
  });
  $("#users-table tbody").replaceChildren(...rows);
}

// ---------------------------------------------------------------- hover

function hover(id, event) {
  const views = lastResult?.views;
  if (!views) return;
  const canvas = event.currentTarget;
  const rect = canvas.getBoundingClientRect();
  const { grid } = views;
  const ix = Math.min(grid - 1, Math.max(0, Math.floor(((event.clientX - rect.left) / rect.width) * grid)));
  const iy = Math.min(grid - 1, Math.max(0, Math.floor(((event.clientY - rect.top) / rect.height) * grid)));
  const key = iy * grid + ix;
  const cell = `Cell (${ix}, ${iy})`;
  const share = (n, total) => (total ? `${((n / total) * 100).toFixed(2)} %` : "0 %");
  let text;
  if (id === "diff") {
    const a = views.a.byCell.get(key) ?? 0;
    const b = views.b.byCell.get(key) ?? 0;
    text = `${cell}: A ${fmt(a)}, B ${fmt(b)}, difference ${a - b >= 0 ? "+" : ""}${fmt(a - b)}`;
  } else {
    const side = id === "a" ? views.a : views.b;
    const n = side.byCell.get(key) ?? 0;
    text = `${cell}: ${fmt(n)} touches, ${share(n, side.total)} of ${fmt(side.total)}`;
  }
  const info = $("#hover-info");
  info.textContent = text;
  info.dataset.count = String(id === "diff" ? "" : ((id === "a" ? views.a : views.b).byCell.get(key) ?? 0));
}

// ---------------------------------------------------------------- export, link

async function exportPng() {
  const views = lastResult?.views;
  if (!views) return;
  const query = queryRequest(state, "A");
  if (isPerUser(state)) {
    // The PNG shows what the view shows: the selected user's touches.
    query.mode = "ALL_USERS";
    delete query.topUsers;
    const user = state.user || lastResult.replyA.userTouchCounts?.[0]?.userId;
    if (user) query.userId = user;
  }
  const request = { query, width: views.size.width };
  const shot = lastResult.shot;
  if (shot) request.screenshotId = shot.screenshotId;
  const button = $("#export");
  button.disabled = true;
  button.textContent = "Exporting…";
  try {
    const reply = await call("RenderHeatmap", request, token);
    const blob = new Blob([base64ToBytes(reply.png)], { type: "image/png" });
    const url = URL.createObjectURL(blob);
    const link = document.createElement("a");
    link.href = url;
    link.download = `heatmap-${state.screen.replace(/[^\w.-]+/g, "_")}.png`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (err) {
    if (!handleError(err)) setStatus("error", `Export failed. ${describe(err)}`, false);
  } finally {
    button.disabled = false;
    button.textContent = "Export PNG";
  }
}

async function copyLink() {
  const url = location.origin + location.pathname + writeState(state);
  const field = $("#link");
  field.value = url;
  field.hidden = false;
  field.select();
  try {
    await navigator.clipboard.writeText(url);
    setStatus("ok", "Link copied.");
  } catch {
    setStatus("ok", "Copy the link from the field above.");
  }
}

// ---------------------------------------------------------------- start

function start() {
  fillControls();
  bindControls();
  syncControls();
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {
    sessionStorage.setItem(TOKEN_KEY, fragment.get("token"));
    // The token stays out of the address bar, history and copied links.
    history.replaceState(null, "", location.pathname + location.search);
  }
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
  else showSignIn("");
}

start();
