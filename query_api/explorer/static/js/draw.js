// The heatmap drawn from data points, the same way RenderHeatmap draws its PNG
// (docs/explorer.md, "Drawing"): splat each cell's count at its centre in
// pixels, an isotropic Gaussian blur in pixels, t = density / max, viridis at
// t and alpha 0.8 * smoothstep(0.02, 0.45, t) so thin densities fade out
// instead of laying a flat, hard-edged haze over the backdrop.

// Degree-6 polynomial fit of viridis, the coefficients query_api/colormap.py uses,
// so the page and the PNG pick the same 256 colours.
const COEFFS = [
  [0.2777273272234177, 0.005407344544966578, 0.3340998053353061],
  [0.1050930431085774, 1.404613529898575, 1.384590162594685],
  [-0.3308618287255563, 0.214847559468213, 0.09509516302823659],
  [-4.634230498983486, -5.799100973351585, -19.33244095627987],
  [6.228269936347081, 14.17993336680509, 56.69055260068105],
  [4.776384997670288, -13.74514537774601, -65.35303263337234],
  [-5.435455855934631, 4.645852612178535, 26.3124352495832],
];

export const VIRIDIS = (() => {
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = i / 255;
    for (let c = 0; c < 3; c++) {
      let v = 0;
      for (let k = COEFFS.length - 1; k >= 0; k--) v = v * t + COEFFS[k][c];
      lut[i * 3 + c] = Math.min(255, Math.max(0, Math.round(v * 255)));
    }
  }
  return lut;
})();

// Diverging ramp for the difference map: |t| from 0 (light) to 1 (dark);
// red where A has more touches, blue where B has.
const RED = [
  [253, 219, 199],
  [178, 24, 43],
];
const BLUE = [
  [209, 229, 240],
  [33, 102, 172],
];

function ramp(ends) {
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const u = i / 255;
    for (let c = 0; c < 3; c++) lut[i * 3 + c] = Math.round(ends[0][c] + (ends[1][c] - ends[0][c]) * u);
  }
  return lut;
}
export const DIFF_RED = ramp(RED);
export const DIFF_BLUE = ramp(BLUE);

export const DEFAULT_ASPECT = 19.5 / 9; // height / width without a backdrop

export function smoothstep(e0, e1, x) {
  const u = Math.min(1, Math.max(0, (x - e0) / (e1 - e0)));
  return u * u * (3 - 2 * u);
}

export function alphaAt(t) {
  return 0.8 * smoothstep(0.02, 0.45, t);
}

export function sigmaFor(width, height, grid) {
  return Math.max(0.75 * Math.max(width / grid, height / grid), 2.0);
}

function gaussianKernel(sigma) {
  const radius = Math.max(1, Math.ceil(3 * sigma));
  const kernel = new Float64Array(2 * radius + 1);
  let sum = 0;
  for (let i = -radius; i <= radius; i++) {
    const v = Math.exp(-0.5 * (i / sigma) ** 2);
    kernel[i + radius] = v;
    sum += v;
  }
  for (let i = 0; i < kernel.length; i++) kernel[i] /= sum;
  return { kernel, radius };
}

// The largest width x height with the given aspect (height / width) inside the box.
// The height is always round(width * aspect), as RenderHeatmap sizes its PNG
// for a given width, so an export at the view's width is the view's size.
export function fitSize(maxWidth, maxHeight, aspect) {
  let width = Math.max(1, Math.floor(maxWidth));
  if (Math.round(width * aspect) > maxHeight) width = Math.max(1, Math.floor(maxHeight / aspect));
  return { width, height: Math.max(1, Math.round(width * aspect)) };
}

// cells: array of {ix, iy, count}. Returns Float64Array(width * height), row-major.
// The blur is the plain separable convolution (zero outside the image), computed
// only where the splat is non-zero: the splat touches at most two pixel rows per
// cell row, so both passes skip the empty rows instead of convolving them.
export function density(cells, grid, width, height) {
  const rows = new Map(); // pixel row -> Float64Array of the splat on that row
  const rowOf = (y) => {
    let row = rows.get(y);
    if (row === undefined) {
      row = new Float64Array(width);
      rows.set(y, row);
    }
    return row;
  };
  const sx = width / grid;
  const sy = height / grid;
  for (const { ix, iy, count } of cells) {
    // Pixel i's centre is at i + 0.5: bilinear weights between the two pixel
    // centres either side of the cell centre, on each axis.
    const px = (ix + 0.5) * sx - 0.5;
    const py = (iy + 0.5) * sy - 0.5;
    const x0 = Math.floor(px);
    const y0 = Math.floor(py);
    const fx = px - x0;
    const fy = py - y0;
    for (const [y, wy] of [
      [y0, 1 - fy],
      [y0 + 1, fy],
    ]) {
      if (y < 0 || y >= height || wy === 0) continue;
      const row = rowOf(y);
      if (x0 >= 0 && x0 < width) row[x0] += count * wy * (1 - fx);
      if (x0 + 1 >= 0 && x0 + 1 < width && fx !== 0) row[x0 + 1] += count * wy * fx;
    }
  }
  const { kernel, radius } = gaussianKernel(sigmaFor(width, height, grid));
  const blurredRows = new Map();
  for (const [y, row] of rows) {
    const out = new Float64Array(width);
    for (let x = 0; x < width; x++) {
      const v = row[x];
      if (v === 0) continue;
      const lo = Math.max(0, x - radius);
      const hi = Math.min(width - 1, x + radius);
      for (let o = lo; o <= hi; o++) out[o] += v * kernel[o - x + radius];
    }
    blurredRows.set(y, out);
  }
  const sourceRows = [...blurredRows.keys()].sort((a, b) => a - b);
  const result = new Float64Array(width * height);
  let first = 0;
  for (let y = 0; y < height; y++) {
    while (first < sourceRows.length && sourceRows[first] < y - radius) first++;
    const base = y * width;
    for (let s = first; s < sourceRows.length && sourceRows[s] <= y + radius; s++) {
      const r = sourceRows[s];
      const w = kernel[r - y + radius];
      const src = blurredRows.get(r);
      for (let x = 0; x < width; x++) result[base + x] += w * src[x];
    }
  }
  return result;
}

function maxOf(values) {
  let m = 0;
  for (let i = 0; i < values.length; i++) if (values[i] > m) m = values[i];
  return m;
}

// RGBA pixels of the heat layer (transparent where nothing is drawn).
export function heatPixels(dens, width, height) {
  const pixels = new ImageData(width, height);
  const data = pixels.data;
  const peak = maxOf(dens);
  if (peak <= 0) return pixels;
  const alphaLut = new Uint8ClampedArray(256);
  for (let i = 0; i < 256; i++) alphaLut[i] = Math.round(alphaAt(i / 255) * 255);
  for (let p = 0; p < dens.length; p++) {
    const i = Math.round((dens[p] / peak) * 255);
    if (alphaLut[i] === 0) continue;
    const o = p * 4;
    data[o] = VIRIDIS[i * 3];
    data[o + 1] = VIRIDIS[i * 3 + 1];
    data[o + 2] = VIRIDIS[i * 3 + 2];
    data[o + 3] = alphaLut[i];
  }
  return pixels;
}

// Difference A - B, both densities normalised by the same max |A - B|.
export function diffPixels(densA, densB, width, height) {
  const pixels = new ImageData(width, height);
  const data = pixels.data;
  let peak = 0;
  for (let p = 0; p < densA.length; p++) peak = Math.max(peak, Math.abs(densA[p] - densB[p]));
  if (peak <= 0) return { pixels, peak };
  for (let p = 0; p < densA.length; p++) {
    const t = (densA[p] - densB[p]) / peak;
    const a = Math.round(alphaAt(Math.abs(t)) * 255);
    if (a === 0) continue;
    const lut = t > 0 ? DIFF_RED : DIFF_BLUE;
    const i = Math.round(Math.abs(t) * 255) * 3;
    const o = p * 4;
    data[o] = lut[i];
    data[o + 1] = lut[i + 1];
    data[o + 2] = lut[i + 2];
    data[o + 3] = a;
  }
  return { pixels, peak };
}

// Cells from the response's data points (centres (ix + 0.5) / grid), summed per
// cell, optionally only one user's.
export function cellsFrom(points, grid, userId) {
  const byCell = new Map();
  for (const p of points) {
    if (userId && p.userId !== userId) continue;
    const ix = Math.min(Math.floor((p.x ?? 0) * grid), grid - 1);
    const iy = Math.min(Math.floor((p.y ?? 0) * grid), grid - 1);
    const key = iy * grid + ix;
    byCell.set(key, (byCell.get(key) ?? 0) + Number(p.count ?? 0));
  }
  const cells = [];
  for (const [key, count] of byCell) cells.push({ ix: key % grid, iy: Math.floor(key / grid), count });
  return cells;
}

export function rampGradient(lut) {
  const stops = [];
  for (let i = 0; i <= 8; i++) {
    const k = Math.round((i / 8) * 255) * 3;
    stops.push(`rgb(${lut[k]}, ${lut[k + 1]}, ${lut[k + 2]}) ${(i / 8) * 100}%`);
  }
  return `linear-gradient(to right, ${stops.join(", ")})`;
}

export function divergingGradient() {
  const stops = [];
  for (let i = 8; i >= 0; i--) {
    const k = Math.round((i / 8) * 255) * 3;
    stops.push(`rgb(${DIFF_BLUE[k]}, ${DIFF_BLUE[k + 1]}, ${DIFF_BLUE[k + 2]})`);
  }
  for (let i = 1; i <= 8; i++) {
    const k = Math.round((i / 8) * 255) * 3;
    stops.push(`rgb(${DIFF_RED[k]}, ${DIFF_RED[k + 1]}, ${DIFF_RED[k + 2]})`);
  }
  return `linear-gradient(to right, ${stops.join(", ")})`;
}
