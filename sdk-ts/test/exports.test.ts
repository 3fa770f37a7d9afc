// The public entry's value exports, listed by hand: adding one to `@kwaainet/sdk` is an API
// decision (README "Public API"), so it has to be made here too, on purpose. Types are
// checked where they are used (create-types.test.ts imports from the entry).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import * as publicApi from '../src/index.js';
import * as internal from '../src/internal.js';

const PUBLIC = [
  // The facade and its environmental-estimate constants.
  'KwaaiNet', 'GRID_G_CO2_PER_KWH', 'WATTS_PER_BUSY_CORE',
  // The page's P2P node.
  'KwaaiNetwork', 'MAX_MESSAGE_BYTES', 'fetchBootstrapAddrs',
  // Every typed error.
  'AbortError', 'BackendLostError', 'ConsentRequiredError', 'DisposedError', 'EngineCrashedError', 'EngineError',
  'IntegrityError', 'InvalidArgumentError', 'KwaaiNetError', 'ModelTooLargeError', 'NetworkError', 'NodeApiError',
  'NotInitializedError', 'P2pError', 'ProtocolError', 'QuotaExceededError', 'UnsupportedError',
  // OpenAI helper, and the `maxResources` defaults and parser.
  'assembleChunks', 'DEFAULT_MAX_RESOURCES', 'parseMaxResources',
];

describe('@kwaainet/sdk exports', () => {
  it('exports exactly the documented public values', () => {
    assert.deepEqual(Object.keys(publicApi).sort(), [...PUBLIC].sort());
  });

  it('every error class is public', async () => {
    const errors = await import('../src/errors.js');
    const classes = Object.entries(errors)
      .filter(([, v]) => typeof v === 'function' && v.prototype instanceof Error)
      .map(([name]) => name);
    assert.ok(classes.length > 10, 'found the error classes');
    for (const name of classes) assert.ok(PUBLIC.includes(name), `${name} is not public`);
  });

  it('@kwaainet/sdk/internal holds the rest and repeats nothing public', () => {
    const names = Object.keys(internal);
    for (const name of ['ProxyEngine', 'startHost', 'parseHostMessage', 'fetchModel', 'DutyCycle', 'ConsentManager', 'installFromScriptTag']) {
      assert.ok(names.includes(name), `internal lacks ${name}`);
    }
    assert.deepEqual(names.filter((n) => PUBLIC.includes(n)), []);
  });
});
