// The whole view in the URL's query string, so a copied link reopens the same
// view. Only values that differ from the defaults are written; the token never is.

export const EVENT_TYPES = ["TAP", "SCROLL", "ACTION_CLICK"];
export const GRID_SIZES = [8, 16, 32, 64, 128, 256, 512];
export const PRESETS = {
  all: { label: "All time", hours: null },
  "24h": { label: "Last 24 hours", hours: 24 },
  "7d": { label: "Last 7 days", hours: 7 * 24 },
  "30d": { label: "Last 30 days", hours: 30 * 24 },
  custom: { label: "Custom", hours: null },
};

export const DEFAULTS = Object.freeze({
  screen: "",
  shot: "", // "" newest, "none" no backdrop, else a screenshot id
  range: "all",
  from: "", // custom range, "YYYY-MM-DDTHH:00" UTC
  to: "",
  campaign: "",
  types: EVENT_TYPES.join(","),
  grid: 64,
  mode: "all", // "all" | "user"
  top: 20,
  user: "",
  cmp: "off", // "off" | "period" | "campaign"
  bfrom: "",
  bto: "",
  bcampaign: "",
});

const NUMBERS = new Set(["grid", "top"]);

export function readState(search) {
  const params = new URLSearchParams(search);
  const state = { ...DEFAULTS };
  for (const key of Object.keys(DEFAULTS)) {
    if (!params.has(key)) continue;
    const raw = params.get(key);
    state[key] = NUMBERS.has(key) ? Number(raw) || DEFAULTS[key] : raw;
  }
  if (!GRID_SIZES.includes(state.grid)) state.grid = DEFAULTS.grid;
  if (!(state.range in PRESETS)) state.range = DEFAULTS.range;
  if (!["all", "user"].includes(state.mode)) state.mode = DEFAULTS.mode;
  if (!["off", "period", "campaign"].includes(state.cmp)) state.cmp = DEFAULTS.cmp;
  state.top = Math.min(1000, Math.max(1, Math.round(state.top)));
  return state;
}

export function writeState(state) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(state)) {
    if (!(key in DEFAULTS) || String(value) === String(DEFAULTS[key])) continue;
    params.set(key, String(value));
  }
  const text = params.toString();
  return text ? `?${text}` : "";
}

function hourFloor(ms) {
  return Math.floor(ms / 3_600_000) * 3_600_000;
}

// "YYYY-MM-DDTHH:MM" (a datetime-local value, read as UTC) -> RFC 3339.
export function localToRfc3339(value) {
  if (!value) return undefined;
  const ms = Date.parse(`${value.length === 16 ? `${value}:00` : value}Z`);
  return Number.isNaN(ms) ? undefined : new Date(ms).toISOString().replace(".000Z", "Z");
}

export function rfc3339ToLocal(ms) {
  return new Date(ms).toISOString().slice(0, 16);
}

// [start, end) of the main time filter as RFC 3339 strings (undefined: unbounded).
export function timeRange(state, nowMs = Date.now()) {
  const preset = PRESETS[state.range];
  if (state.range === "custom") {
    return { start: localToRfc3339(state.from), end: localToRfc3339(state.to) };
  }
  if (preset?.hours) {
    // Hour granularity on the server: the window ends after the current hour.
    const end = hourFloor(nowMs) + 3_600_000;
    return {
      start: new Date(end - preset.hours * 3_600_000).toISOString().replace(".000Z", "Z"),
      end: undefined,
    };
  }
  return { start: undefined, end: undefined };
}

export function selectedTypes(state) {
  return state.types ? state.types.split(",").filter((t) => EVENT_TYPES.includes(t)) : [];
}

// A comparison shows all users on both sides: per-user tables of two sides
// would not line up.
export function isPerUser(state) {
  return state.mode === "user" && state.cmp === "off";
}

// QueryHeatmapDataRequest (proto3 JSON) for the main view (side A) or side B.
export function queryRequest(state, side = "A", nowMs = Date.now()) {
  const types = selectedTypes(state);
  let { start, end } = timeRange(state, nowMs);
  let campaign = state.campaign;
  if (side === "B" && state.cmp === "period") {
    start = localToRfc3339(state.bfrom);
    end = localToRfc3339(state.bto);
  }
  if (side === "B" && state.cmp === "campaign") campaign = state.bcampaign;
  const perUser = isPerUser(state) && side === "A";
  const request = { screenName: state.screen, gridSize: state.grid, mode: perUser ? "PER_USER" : "ALL_USERS" };
  if (campaign) request.campaignId = campaign;
  // All types selected is the same as none named: send the shorter request.
  if (types.length && types.length < EVENT_TYPES.length) request.eventTypes = types;
  if (start) request.startTime = start;
  if (end) request.endTime = end;
  if (perUser) request.topUsers = state.top;
  return request;
}
