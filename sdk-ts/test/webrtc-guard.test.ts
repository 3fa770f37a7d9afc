import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { guardWebRtcHandlers, isDroppedClosureError } from '../src/webrtc-guard.js';

describe('WebRTC handler guard (libp2p-webrtc-websys freed closures)', () => {
  it('detaches a handler whose closure was freed, and rethrows every other error', () => {
    const handlers = new WeakMap<object, Map<string, unknown>>();
    class Channel {
      fire(name: string): unknown {
        const h = handlers.get(this)?.get(name);
        return typeof h === 'function' ? (h as () => unknown).call(this) : undefined;
      }
    }
    for (const name of ['onopen', 'onclose', 'onmessage']) {
      Object.defineProperty(Channel.prototype, name, {
        configurable: true,
        enumerable: true,
        get(this: Channel) {
          return handlers.get(this)?.get(name) ?? null;
        },
        set(this: Channel, h: unknown) {
          let m = handlers.get(this);
          if (!m) handlers.set(this, (m = new Map()));
          m.set(name, h);
        },
      });
    }
    const scope = { RTCDataChannel: Channel };
    assert.equal(guardWebRtcHandlers(scope), true);
    assert.equal(guardWebRtcHandlers(scope), true, 'installing twice is harmless');

    const ch = new Channel() as Channel & Record<string, unknown>;
    let calls = 0;
    ch.onmessage = () => {
      calls++;
      return 'ok';
    };
    assert.equal(ch.fire('onmessage'), 'ok');
    ch.onclose = () => {
      throw new Error('closure invoked recursively or after being dropped');
    };
    assert.doesNotThrow(() => ch.fire('onclose'));
    assert.equal(ch.onclose, null, 'the stale handler is gone');
    ch.onopen = () => {
      throw new TypeError('a real bug');
    };
    assert.throws(() => ch.fire('onopen'), /a real bug/);
    assert.equal(typeof ch.onopen, 'function', 'other errors leave the handler in place');
    ch.onmessage = null;
    assert.equal(ch.onmessage, null);
    assert.equal(calls, 1);
  });

  it('is a no-op without WebRTC, and recognises only the freed-closure error', () => {
    assert.equal(guardWebRtcHandlers({}), false);
    assert.equal(isDroppedClosureError(new Error('closure invoked recursively or after being dropped')), true);
    assert.equal(isDroppedClosureError(new Error('closure failed')), false);
    assert.equal(isDroppedClosureError('closure invoked recursively or after being dropped'), false);
  });
});
