import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { InvalidArgumentError } from '../src/errors.js';
import { KwaaiNet } from '../src/kwaainet.js';
import { parseScriptTag, type ScriptLike } from '../src/script-tag.js';

const tag = (src: string, attrs: Record<string, string>): ScriptLike => ({
  src,
  getAttribute: (name) => attrs[name] ?? null,
});
const PAGE = 'https://site.example/blog/post.html';

describe('script tag', () => {
  it('reads the one-line tag and finds its base URL', () => {
    const c = parseScriptTag(tag('https://cdn.example/kwaainet/v0.1.0/distributed-ai.js', {
      'data-services': 'compute,storage,identity,carbon',
      'data-privacy-compliant': 'gdpr,ccpa',
      'data-max-resources': 'cpu:20,memory:1024,storage:5000',
      'data-model-url': '/models/m.gguf',
      'data-model-sha256': 'ab'.repeat(32),
      'data-host': 'worker',
      'data-engine': 'cpu',
      'data-service-worker': '/kwaainet-sw.js',
      'data-load-model': 'lazy',
      'data-context-length': '1024',
      'data-threads': '2',
    }), PAGE);
    assert.equal(c.options.baseUrl, 'https://cdn.example/kwaainet/v0.1.0/');
    assert.equal(c.options.modelUrl, 'https://site.example/models/m.gguf');
    assert.equal(c.options.serviceWorkerUrl, 'https://site.example/kwaainet-sw.js');
    assert.equal(c.options.host, 'worker');
    assert.equal(c.options.engine, 'cpu');
    assert.equal(c.options.loadModelOnInit, false);
    assert.equal(c.options.contextLength, 1024);
    assert.equal(c.options.threads, 2);
    assert.equal(c.globalName, 'kwaainet');
    assert.equal(c.autoInit, true);
    const ai = new KwaaiNet(c.options);
    assert.deepEqual(ai.services, ['compute', 'storage', 'identity', 'carbon']);
    assert.deepEqual(ai.privacyCompliance, ['gdpr', 'ccpa']);
    assert.deepEqual(ai.maxResources, { cpu: 20, memory: 1024, storage: 5000 });
  });

  it('resolves a relative src against the page and honours data-global / data-auto-init', () => {
    const c = parseScriptTag(tag('../cdn/v1/distributed-ai.js', { 'data-global': 'ai', 'data-auto-init': 'false', 'data-service-worker': 'none' }), PAGE);
    assert.equal(c.options.baseUrl, 'https://site.example/cdn/v1/');
    assert.equal(c.globalName, 'ai');
    assert.equal(c.autoInit, false);
    assert.equal(c.options.serviceWorkerUrl, null);
  });

  it('rejects bad attributes with typed errors', () => {
    const bad: Array<Record<string, string>> = [
      { 'data-host': 'gpu' }, { 'data-engine': 'gpu' }, { 'data-global': 'window.x' }, { 'data-global': 'KwaaiNet' }, { 'data-load-model': 'soon' },
      { 'data-context-length': '1e9' }, { 'data-threads': 'all' }, { 'data-threads': '-1' },
    ];
    for (const attrs of bad) assert.throws(() => parseScriptTag(tag('https://cdn/x.js', attrs), PAGE), InvalidArgumentError, JSON.stringify(attrs));
    assert.throws(() => new KwaaiNet({ services: 'compute,mining' }), InvalidArgumentError);
    assert.throws(() => new KwaaiNet({ privacyCompliance: 'hipaa' }), InvalidArgumentError);
    assert.throws(() => new KwaaiNet({ engine: 'gpu' as 'webgpu' }), InvalidArgumentError);
    for (const threads of [0, 17, 1.5]) assert.throws(() => new KwaaiNet({ threads }), /threads: an integer in \[1, 16\]/);
    assert.throws(() => new KwaaiNet({ maxResources: 'cpu:500' }), InvalidArgumentError);
    assert.throws(() => new KwaaiNet({ modelUrl: 'https://x/m', modelSha256: 'nothex' }), InvalidArgumentError);
  });
});
