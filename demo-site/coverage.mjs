// The picture of a model's swarm in the page's Network panel: one cell per block, coloured
// by how many online servers hold it (none, one, several), and under it one bar per server
// over its blocks, in lanes so bars never overlap, coloured by state. `layout` is pure (and
// tested in node); `draw` makes the SVG with DOM calls only: model ids and peer ids come
// from the DHT, so nothing is ever parsed as markup.

const MAX_BLOCKS = 4096;
const MAX_SERVERS = 256;
const CELL_H = 14;
const BAR_H = 8;
const GAP = 3;

export const COLORS = Object.freeze({
  uncovered: '#c62828',
  single: '#f9a825',
  redundant: '#2e7d32',
  online: '#1565c0',
  joining: '#90a4ae',
  draining: '#8d6e63',
});

const int = (v, lo, hi) => {
  const n = Number.isFinite(Number(v)) ? Math.trunc(Number(v)) : lo;
  return Math.min(hi, Math.max(lo, n));
};

const short = (id) => {
  const s = String(id ?? '?');
  return s.length > 12 ? s.slice(0, 6) + '…' + s.slice(-4) : s;
};

/** Where every shape of `report`'s picture goes, in a `width`-wide drawing. */
export function layout(report, width = 600) {
  const r = report && typeof report === 'object' ? report : {};
  const n = int(r.blocks, 0, MAX_BLOCKS);
  const cell = n > 0 ? width / n : 0;
  const coverage = Array.isArray(r.coverage) ? r.coverage : [];
  const cells = [];
  for (let i = 0; i < n; i++) {
    const c = int(coverage[i], 0, 1e6);
    const fill = c === 0 ? COLORS.uncovered : c === 1 ? COLORS.single : COLORS.redundant;
    cells.push({ x: i * cell, w: cell, fill, title: `block ${i}: ${c} online server${c === 1 ? '' : 's'}` });
  }
  const lanes = [];
  const bars = [];
  for (const s of (Array.isArray(r.servers) ? r.servers : []).slice(0, MAX_SERVERS)) {
    if (!s || typeof s !== 'object') continue;
    const start = int(s.start, 0, n);
    const end = int(s.end, start, n);
    if (end <= start) continue;
    let lane = lanes.findIndex((last) => last <= start);
    if (lane < 0) {
      lane = lanes.length;
      lanes.push(0);
    }
    lanes[lane] = end;
    const state = ['online', 'joining', 'draining'].includes(s.state) ? s.state : 'joining';
    const t = Number(s.throughput);
    const facts = [
      `blocks ${start}..${end}`,
      state,
      Number.isFinite(t) ? `${t.toFixed(1)} tok/s per block` : 'throughput unknown',
      Number.isFinite(Number(s.free_cache)) ? `${int(s.free_cache, 0, 2 ** 32)} cache positions free` : null,
      s.relayed ? 'relayed' : 'direct',
    ].filter(Boolean);
    bars.push({
      x: start * cell,
      y: CELL_H + GAP + lane * (BAR_H + GAP),
      w: (end - start) * cell,
      h: BAR_H,
      fill: COLORS[state],
      title: `${short(s.peer_id)}: ${facts.join(', ')}`,
    });
  }
  return {
    width,
    height: CELL_H + GAP + lanes.length * (BAR_H + GAP),
    cellHeight: CELL_H,
    cells,
    bars,
    complete: r.complete === true && n > 0,
  };
}

/** The SVG element of `report`'s picture, made in `doc`. */
export function draw(report, doc = globalThis.document, width = 600) {
  const NS = 'http://www.w3.org/2000/svg';
  const l = layout(report, width);
  const svg = doc.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', `0 0 ${l.width} ${l.height}`);
  svg.setAttribute('width', '100%');
  svg.setAttribute('role', 'img');
  const label = doc.createElementNS(NS, 'title');
  label.textContent = `${String(report?.model ?? 'model')}: ${l.complete ? 'every block is served' : 'some blocks have no server'}`;
  svg.append(label);
  const rect = (x, y, w, h, fill, title) => {
    const e = doc.createElementNS(NS, 'rect');
    for (const [k, v] of Object.entries({ x, y, width: Math.max(w - 0.5, 0.5), height: h, fill })) e.setAttribute(k, String(v));
    const t = doc.createElementNS(NS, 'title');
    t.textContent = title;
    e.append(t);
    return e;
  };
  for (const c of l.cells) svg.append(rect(c.x, 0, c.w, l.cellHeight, c.fill, c.title));
  for (const b of l.bars) svg.append(rect(b.x, b.y, b.w, b.h, b.fill, b.title));
  return svg;
}
