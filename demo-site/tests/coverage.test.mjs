// The Network panel's coverage picture: its layout from a health report (what
// /api/v1/state's `models` carries), including reports a hostile DHT could produce.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { COLORS, layout } from '../coverage.mjs';

const server = (start, end, state = 'online', extra = {}) => ({
  peer_id: '12D3KooWExamplePeerIdentifier' + start,
  start,
  end,
  state,
  throughput: 50,
  free_cache: 4096,
  relayed: false,
  ...extra,
});

test('cells follow coverage and bars never overlap in a lane', () => {
  const report = {
    model: 'smollm2@ab',
    blocks: 6,
    coverage: [1, 1, 2, 2, 0, 0],
    complete: false,
    servers: [server(0, 4), server(2, 4), server(4, 6, 'draining', { relayed: true })],
  };
  const l = layout(report, 600);
  assert.deepEqual(l.cells.map((c) => c.fill), [
    COLORS.single, COLORS.single, COLORS.redundant, COLORS.redundant, COLORS.uncovered, COLORS.uncovered,
  ]);
  assert.equal(l.cells[2].x, 200);
  assert.equal(l.complete, false);
  // 0..4 and 2..4 overlap: two lanes; 4..6 fits after 0..4 in the first.
  assert.deepEqual(l.bars.map((b) => [b.x, b.w, b.y]), [[0, 400, 17], [200, 200, 28], [400, 200, 17]]);
  assert.equal(l.bars[2].fill, COLORS.draining);
  assert.match(l.bars[2].title, /blocks 4\.\.6, draining, 50\.0 tok\/s per block, 4096 cache positions free, relayed/);
  assert.equal(l.height, 14 + 3 + 2 * 11);
  assert.equal(layout({ ...report, coverage: [1, 1, 1, 1, 1, 1], complete: true }).complete, true);
});

test('hostile or broken reports stay bounded and never throw', () => {
  for (const bad of [null, 7, 'x', {}, { blocks: -3 }, { blocks: 'NaN', servers: 'no' }]) {
    const l = layout(bad);
    assert.equal(l.cells.length, 0);
    assert.equal(l.bars.length, 0);
    assert.equal(l.complete, false);
  }
  const huge = layout({
    blocks: 1e12,
    coverage: [],
    complete: true,
    servers: Array.from({ length: 10000 }, (_, i) => server(i, i + 1e9, '<script>', { throughput: 'fast' })),
  });
  assert.equal(huge.cells.length, 4096);
  assert.equal(huge.bars.length, 256);
  assert.ok(huge.bars.every((b) => b.x + b.w <= 600 + 1e-9));
  assert.equal(huge.bars[0].fill, COLORS.joining); // an unknown state is not drawn as online
  assert.match(huge.bars[0].title, /throughput unknown/);
});
