// QueryHeatmapData in Connect's binary form (application/proto): the page's
// hot call. Its answer is thousands of points, and proto3 JSON of that many
// messages costs the Python server far more than the query itself
// (bench/bench_explorer.py measures both), while the binary form is one
// upb serialisation. Field numbers are schemas/heatmap/v1/heatmap.proto's
// (QueryHeatmapDataRequest / QueryHeatmapDataResponse); the result has the
// same shape as the proto3 JSON reply, so the rest of the page does not care.

const MODES = { HEATMAP_MODE_UNSPECIFIED: 0, ALL_USERS: 1, PER_USER: 2 };
const EVENT_TYPES = { TOUCH_EVENT_TYPE_UNSPECIFIED: 0, TAP: 1, SCROLL: 2, ACTION_CLICK: 3 };

class Writer {
  constructor() {
    this.bytes = [];
  }

  varint(value) {
    let v = value;
    while (v >= 0x80) {
      this.bytes.push((v % 0x80) | 0x80);
      v = Math.floor(v / 0x80);
    }
    this.bytes.push(v);
  }

  tag(field, wire) {
    this.varint(field * 8 + wire);
  }

  uint(field, value) {
    if (!value) return;
    this.tag(field, 0);
    this.varint(value);
  }

  raw(field, bytes) {
    this.tag(field, 2);
    this.varint(bytes.length);
    for (const b of bytes) this.bytes.push(b);
  }

  string(field, text) {
    if (text) this.raw(field, new TextEncoder().encode(text));
  }

  timestamp(field, rfc3339) {
    if (!rfc3339) return;
    const ms = Date.parse(rfc3339);
    const inner = new Writer();
    inner.uint(1, Math.floor(ms / 1000));
    inner.uint(2, (ms % 1000) * 1_000_000);
    this.raw(field, inner.bytes);
  }
}

export function encodeQuery(request) {
  const w = new Writer();
  w.string(1, request.screenName);
  w.string(2, request.campaignId);
  w.uint(3, MODES[request.mode] ?? 0);
  w.string(4, request.userId);
  if (request.eventTypes?.length) {
    const packed = new Writer();
    for (const t of request.eventTypes) packed.varint(EVENT_TYPES[t]);
    w.raw(5, packed.bytes);
  }
  w.timestamp(6, request.startTime);
  w.timestamp(7, request.endTime);
  w.uint(8, request.gridSize);
  w.uint(20, request.topUsers);
  return new Uint8Array(w.bytes);
}

class Reader {
  constructor(bytes, start = 0, end = bytes.length) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = start;
    this.end = end;
  }

  varint() {
    // Numbers up to 2^53 stay exact: counts and totals are far below.
    let result = 0;
    let scale = 1;
    for (;;) {
      const b = this.bytes[this.pos++];
      result += (b & 0x7f) * scale;
      if (b < 0x80) return result;
      scale *= 0x80;
    }
  }

  float() {
    const v = this.view.getFloat32(this.pos, true);
    this.pos += 4;
    return v;
  }

  string(length) {
    const text = new TextDecoder().decode(this.bytes.subarray(this.pos, this.pos + length));
    this.pos += length;
    return text;
  }

  skip(wire) {
    if (wire === 0) this.varint();
    else if (wire === 1) this.pos += 8;
    else if (wire === 5) this.pos += 4;
    else if (wire === 2) this.pos += this.varint();
    else throw new Error(`unsupported wire type ${wire}`);
  }

  // Calls handle(field, wire) for every field; it returns false for one it did not read.
  fields(handle) {
    while (this.pos < this.end) {
      const key = this.varint();
      const field = Math.floor(key / 8);
      const wire = key % 8;
      if (!handle(field, wire)) this.skip(wire);
    }
  }

  message(read) {
    const length = this.varint();
    const inner = new Reader(this.bytes, this.pos, this.pos + length);
    this.pos += length;
    return read(inner);
  }
}

function readPoint(r) {
  const point = { x: 0, y: 0, count: 0, userId: "", uniqueUsers: 0 };
  r.fields((field, wire) => {
    if (field === 1 && wire === 5) point.x = r.float();
    else if (field === 2 && wire === 5) point.y = r.float();
    else if (field === 3 && wire === 0) point.count = r.varint();
    else if (field === 4 && wire === 2) point.userId = r.string(r.varint());
    else if (field === 40 && wire === 0) point.uniqueUsers = r.varint();
    else return false;
    return true;
  });
  return point;
}

function readUserCount(r) {
  const user = { userId: "", touchCount: 0 };
  r.fields((field, wire) => {
    if (field === 1 && wire === 2) user.userId = r.string(r.varint());
    else if (field === 2 && wire === 0) user.touchCount = r.varint();
    else return false;
    return true;
  });
  return user;
}

const RESPONSE_NUMBERS = {
  3: "totalCount",
  4: "gridSize",
  20: "totalUsers",
  21: "totalTouches",
  40: "uniqueUsers",
  41: "suppressedCount",
  42: "suppressedCells",
};

export function decodeQueryReply(bytes) {
  const reply = { dataPoints: [], userTouchCounts: [] };
  for (const name of Object.values(RESPONSE_NUMBERS)) reply[name] = 0;
  const r = new Reader(bytes);
  r.fields((field, wire) => {
    if (field === 1 && wire === 2) reply.dataPoints.push(r.message(readPoint));
    else if (field === 2 && wire === 2) reply.userTouchCounts.push(r.message(readUserCount));
    else if (field in RESPONSE_NUMBERS && wire === 0) reply[RESPONSE_NUMBERS[field]] = r.varint();
    else return false;
    return true;
  });
  return reply;
}
