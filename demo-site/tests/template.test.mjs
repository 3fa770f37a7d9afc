// The dev server fills the demo page by the node's rules: the cases both run, and the page
// as committed needs nothing beyond what the servers know.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { TemplateError, fillTemplate } from '../template.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const { cases } = JSON.parse(readFileSync(join(here, 'data', 'template-cases.json'), 'utf8'));

test('the cases the node runs too (engine/p2p/src/http/template.rs)', () => {
  assert.ok(cases.length >= 5);
  for (const c of cases) {
    const run = () => fillTemplate(c.template, c.values);
    if (typeof c.output === 'string') {
      assert.equal(run(), c.output, c.name);
    } else if (Array.isArray(c.missing)) {
      assert.throws(run, (e) => e instanceof TemplateError && e.kind === 'missing' &&
        JSON.stringify(e.names) === JSON.stringify(c.missing), c.name);
    } else if (typeof c.malformedAt === 'number') {
      assert.throws(run, (e) => e instanceof TemplateError && e.kind === 'malformed' && e.at === c.malformedAt, c.name);
    } else {
      assert.fail(`case ${c.name}: no expected output, missing or malformedAt`);
    }
  }
});

test('the demo page needs only what a server knows; its defaults stand without knobs', () => {
  const page = readFileSync(join(here, '..', 'index.html'), 'utf8');
  // What the node supplies (engine/p2p/src/http.rs, node_value) and nothing else.
  const filled = fillTemplate(page, { cdn: '/cdn/v1/', sri: 'sha384-x', modelUrl: '/m', modelSha256: 'ab' });
  assert.ok(!filled.includes('{{'), 'an unfilled placeholder is left');
  assert.match(filled, /data-max-resources="cpu:\d+,memory:\d+,storage:\d+"/);
  assert.match(filled, /<script src="\/cdn\/v1\/distributed-ai\.js" integrity="sha384-x"/);
  assert.throws(() => fillTemplate(page, { cdn: '/cdn/v1/' }), /no value for \{\{sri\}\}, \{\{modelUrl\}\}, \{\{modelSha256\}\}/);
  // Raw values are for the server's own attribute lists only.
  assert.equal(fillTemplate('<s {{extra|}}>', { extra: 'data-a="1"' }, { raw: new Set(['extra']) }), '<s data-a="1">');
  assert.equal(fillTemplate('<s {{extra|}}>', { extra: 'data-a="1"' }), '<s data-a=&quot;1&quot;>');
});
