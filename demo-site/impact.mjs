// The impact dashboard: the node's footprint (GET /api/v1/footprint: totals, hourly
// history, grid, methods and sources) drawn as plain SVG bar charts, its signed contribution
// record (GET /api/v1/contribution), and an ESG/CSR report to download (CSV and JSON, the
// methods and data sources stated in both).

const SVG = 'http://www.w3.org/2000/svg';
const $ = (id) => document.getElementById(id);

/** A bar chart of `values` (with `labels`), `unit` in the bars' titles; `max` fixes the
 *  scale (else the largest value). */
export function barChart(values, labels, unit, { width = 480, height = 140, max: fixed } = {}) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `${labels.length} bars, ${unit}`);
  const max = fixed ?? (Math.max(...values, 0) || 1);
  const w = width / Math.max(values.length, 1);
  values.forEach((v, i) => {
    const h = Math.max((v / max) * (height - 20), v > 0 ? 1 : 0);
    const r = document.createElementNS(SVG, 'rect');
    r.setAttribute('x', String(i * w + 1));
    r.setAttribute('y', String(height - 16 - h));
    r.setAttribute('width', String(Math.max(w - 2, 1)));
    r.setAttribute('height', String(h));
    r.setAttribute('fill', 'currentColor');
    const t = document.createElementNS(SVG, 'title');
    t.textContent = `${labels[i]}: ${v} ${unit}`;
    r.append(t);
    svg.append(r);
  });
  const axis = document.createElementNS(SVG, 'text');
  axis.setAttribute('x', '0');
  axis.setAttribute('y', String(height - 2));
  axis.setAttribute('font-size', '11');
  axis.textContent = labels.length ? `${labels[0]} … ${labels[labels.length - 1]} (scale: ${max} ${unit})` : 'no data yet';
  svg.append(axis);
  return svg;
}

const round = (x, d = 3) => Math.round(x * 10 ** d) / 10 ** d;

/** `[term, value]` rows as a description list's dt/dd elements. */
function terms(rows) {
  return rows.flatMap(([k, v]) => {
    const dt = document.createElement('dt');
    dt.textContent = k;
    const dd = document.createElement('dd');
    dd.textContent = String(v);
    return [dt, dd];
  });
}

/** The CSV report: the methods and sources as comment lines, then one row per hour. */
export function csvReport(f) {
  const lines = [
    '# KwaaiNet node footprint report',
    `# node grid: ${f.grid.region} (${f.grid.intensity_mg_per_kwh / 1000} gCO2e/kWh; ${f.grid.renewable_permille / 10} % renewable; data year ${f.grid.year}; ${f.grid.method})`,
    `# energy: ${f.methods.energy}`,
    `# carbon: ${f.methods.carbon}`,
    `# SCI: ${f.methods.sci}`,
    `# grid data: ${f.methods.grid_data}`,
    'hour_utc,work_tokens,busy_ms,energy_mwh,carbon_mg',
    ...f.history.map((h) => [new Date(h.hour_ms).toISOString(), h.work, h.busy_ms, round(h.energy_uwh / 1000), round(h.carbon_ug / 1000)].join(',')),
  ];
  return lines.join('\n') + '\n';
}

async function main() {
  const get = (path) => fetch(path, { cache: 'no-store' }).then((r) => (r.ok ? r.json() : Promise.reject(new Error(`${path}: HTTP ${r.status}`))));
  const [f, record] = await Promise.all([get('/api/v1/footprint'), get('/api/v1/contribution')]);
  // The last 24 hours, one bar each (empty hours at zero), the newest on the right.
  const HOUR = 3_600_000;
  const now = Math.floor(Date.now() / HOUR) * HOUR;
  const byHour = new Map(f.history.map((h) => [h.hour_ms, h]));
  const slots = Array.from({ length: 24 }, (_, i) => now - (23 - i) * HOUR);
  const labels = slots.map((t) => new Date(t).toISOString().slice(5, 13).replace('T', ' ') + 'h UTC');
  const series = (key) => slots.map((t) => round((byHour.get(t)?.[key] ?? 0) / 1000));
  $('energy-chart').replaceChildren(barChart(series('energy_uwh'), labels, 'mWh'));
  $('carbon-chart').replaceChildren(barChart(series('carbon_ug'), labels, 'mg'));
  const shares = barChart([f.grid.renewable_permille / 10, f.grid.low_carbon_permille / 10], ['renewable', 'low-carbon'], '%', { width: 240, height: 80, max: 100 });
  shares.classList.add('renewable');
  $('renewable-chart').replaceChildren(shares);
  const rows = [
    ['Requests', f.jobs], ['Tokens', f.tokens], ['Served block-tokens', f.block_tokens], ['Busy', `${round(f.busy_ms / 1000, 1)} s`],
    ['Up', `${round(f.uptime_s / 3600, 2)} h`], ['Energy', `${round(f.energy_uwh / 1000)} mWh (${f.method}, ${f.source})`],
    ['Carbon', `${round(f.carbon_ug / 1000)} mg CO2e`], ['SCI', f.sci_ug_per_1k_tokens === null ? '—' : `${round(f.sci_ug_per_1k_tokens / 1000)} mg per 1,000 tokens`],
  ];
  $('totals').replaceChildren(...terms(rows));
  $('grid').textContent = `${f.grid.region}: ${f.grid.intensity_mg_per_kwh / 1000} gCO2e/kWh, ${f.grid.renewable_permille / 10} % renewable, data of ${f.grid.year} (${f.grid.source}).`;
  const r = JSON.parse(record.record);
  $('record').textContent = `Signed by ${r.contributor.slice(0, 24)}…${r.name ? ` (${r.name})` : ''}: ${r.jobs} requests, ${r.block_tokens} block-tokens, ${r.uptime_s} s up. Anyone can check it with the node's key.`;
  $('methods').textContent = `Energy: ${f.methods.energy}. Carbon: ${f.methods.carbon}. ${f.methods.sci}. Grid data: ${f.methods.grid_data}.`;
  const link = (id, text, type) => {
    const a = $(id);
    a.href = URL.createObjectURL(new Blob([text], { type }));
    a.hidden = false;
  };
  link('report-csv', csvReport(f), 'text/csv');
  link('report-json', JSON.stringify({ footprint: f, contribution: record }, null, 1), 'application/json');
  $('impact-status').textContent = `Accounted since ${new Date(f.since_ms).toLocaleString()}.`;
  await network(get);
  document.body.dataset.ready = 'true';
}

/** The network view: the community's totals and the leaderboard (GET /api/v1/leaderboard:
 *  the peers' signed records, verified by the node). */
async function network(get) {
  let board;
  try {
    board = await get('/api/v1/leaderboard');
  } catch (e) {
    $('leaderboard-refused').textContent = `No leaderboard: ${e.message}`;
    return;
  }
  const n = board.network;
  const rows = [
    ['Contributors', n.contributors], ['Work', `${n.work} tokens (block-tokens served + API tokens)`],
    ['Energy', `${round(n.energy_uwh / 1000)} mWh`], ['Carbon', `${round(n.carbon_ug / 1000)} mg CO2e`],
    ['Carbon per 1,000 tokens', n.sci_ug_per_1k_tokens === null ? '—' : `${round(n.sci_ug_per_1k_tokens / 1000)} mg`],
    ['Renewable', n.renewable_permille === null ? '—' : `${n.renewable_permille / 10} % (by energy)`],
  ];
  $('network-totals').replaceChildren(...terms(rows));
  const name = (s) => s.name ?? `${s.contributor.slice(0, 16)}…${s.contributor.slice(-6)}`;
  const top = board.by_work.slice(0, 10);
  $('leaderboard-chart').replaceChildren(barChart(top.map((s) => s.work), top.map(name), 'tokens'));
  $('leaderboard').tBodies[0].replaceChildren(...top.map((s, i) => {
    const tr = document.createElement('tr');
    for (const v of [i + 1, name(s), s.region ?? '—', s.work, round(s.energy_uwh / 1000), `${s.renewable_permille / 10} %`]) {
      const td = document.createElement('td');
      td.textContent = String(v);
      tr.append(td);
    }
    return tr;
  }));
  $('leaderboard-refused').textContent = board.refused.length === 0
    ? `All ${board.by_work.length} records verified (${board.peers_asked} peers asked).`
    : `${board.refused.length} record(s) refused: ${board.refused.join('; ')}`;
}

main().catch((e) => { $('impact-status').textContent = 'No footprint: ' + e.message + ' (a KwaaiNet node serves this page: npm start).'; });
