/**
 * A guard for an upstream bug in the page's P2P module: libp2p-webrtc-websys 0.4 leaves its
 * Rust event handlers on `RTCDataChannel`s (and the `RTCPeerConnection`'s `ondatachannel`)
 * after it has dropped them (rust-libp2p issue #6551; fix pending in PR #6558). When the
 * browser then delivers an event that was already queued — most often a data channel's
 * `close` — the freed wasm-bindgen closure throws "closure invoked recursively or after
 * being dropped" as an uncaught page error.
 *
 * Nothing is lost when that happens: the handler's Rust owner is gone. The guard wraps the
 * handlers set through these objects' `on…` properties so that exactly this error detaches
 * the stale handler instead of surfacing; every other error is rethrown unchanged. Remove it
 * once the P2P module is built on a libp2p-webrtc-websys with the fix.
 */

const DROPPED_CLOSURE = 'closure invoked recursively or after being dropped';
const GUARDED = Symbol.for('kwaainet.webrtcHandlerGuard');

/** The handler properties the P2P module sets, per constructor. */
const HANDLERS: Readonly<Record<string, readonly string[]>> = {
  RTCDataChannel: ['onopen', 'onclose', 'onmessage', 'onbufferedamountlow', 'onerror'],
  RTCPeerConnection: ['ondatachannel'],
};

/** Whether `err` is wasm-bindgen's error for a call into a freed closure. */
export function isDroppedClosureError(err: unknown): boolean {
  return err instanceof Error && err.message.includes(DROPPED_CLOSURE);
}

function guardProperty(proto: object, name: string): void {
  const d = Object.getOwnPropertyDescriptor(proto, name);
  if (!d?.get || !d.set) return;
  const { get, set } = d;
  Object.defineProperty(proto, name, {
    configurable: true,
    enumerable: d.enumerable ?? true,
    get(this: object) {
      return get.call(this);
    },
    set(this: object, handler: unknown) {
      if (typeof handler !== 'function') {
        set.call(this, handler);
        return;
      }
      const target = this;
      set.call(this, function (this: unknown, ...args: unknown[]) {
        try {
          return (handler as (...a: unknown[]) => unknown).apply(this, args);
        } catch (err) {
          if (!isDroppedClosureError(err)) throw err;
          set.call(target, null); // the stale handler goes; its owner is gone
          return undefined;
        }
      });
    },
  });
}

/**
 * Installs the guard on `scope`'s WebRTC constructors (once per realm); false where there
 * is no WebRTC (workers, node).
 */
export function guardWebRtcHandlers(scope: object = globalThis): boolean {
  let found = false;
  for (const [ctorName, names] of Object.entries(HANDLERS)) {
    const ctor = (scope as Record<string, { prototype?: object } | undefined>)[ctorName];
    const proto = ctor?.prototype;
    if (!proto) continue;
    found = true;
    if (Object.hasOwn(proto, GUARDED)) continue;
    for (const name of names) guardProperty(proto, name);
    Object.defineProperty(proto, GUARDED, { value: true });
  }
  return found;
}
