/**
 * Consent before contribution. Nothing is contributed to the network (compute, storage,
 * identity) until the visitor said yes to exactly the services the site declared; the
 * decision is persisted (localStorage), revocable, and asked again when the site's
 * services change or — under GDPR — after `GDPR_CONSENT_MAX_AGE_MS`. Local inference for the
 * visitor's own chat is not contribution and does not need it.
 *
 * The prompt is pluggable (`consentPrompt` option); the default is a small accessible
 * modal `<dialog>` (focus kept inside, Escape declines, labelled for screen readers).
 */

import { ConsentRequiredError, abortErrorFrom, throwIfAborted } from './errors.js';
import type { MaxResources } from './resources.js';
import { isRecord } from './validate.js';

export type Service = 'compute' | 'storage' | 'identity' | 'carbon';
export type PrivacyFlag = 'gdpr' | 'ccpa';

export const SERVICES: readonly Service[] = ['compute', 'storage', 'identity', 'carbon'];
export const PRIVACY_FLAGS: readonly PrivacyFlag[] = ['gdpr', 'ccpa'];

/** GDPR consent is refreshed yearly (a common reading of "consent must stay informed"). */
export const GDPR_CONSENT_MAX_AGE_MS = 365 * 24 * 3600 * 1000;
const STORAGE_KEY = 'kwaainet:consent:v1';

export interface ConsentDecision {
  granted: boolean;
  services: Service[];
  /** Milliseconds since the epoch. */
  decidedAt: number;
}

export interface ConsentRequest {
  services: readonly Service[];
  privacyCompliance: readonly PrivacyFlag[];
  maxResources: Readonly<MaxResources>;
}

/** Shows the request to the visitor; resolves true (allow) or false (decline). */
export type ConsentPrompt = (request: ConsentRequest, signal?: AbortSignal) => Promise<boolean>;

/** Where the decision lives (a `localStorage`-like object). */
export interface ConsentStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface ConsentOptions {
  services: readonly Service[];
  privacyCompliance: readonly PrivacyFlag[];
  maxResources: Readonly<MaxResources>;
  prompt?: ConsentPrompt;
  storage?: ConsentStorage;
  now?: () => number;
}

export function memoryConsentStorage(): ConsentStorage {
  const map = new Map<string, string>();
  return {
    getItem: (k) => map.get(k) ?? null,
    setItem: (k, v) => void map.set(k, v),
    removeItem: (k) => void map.delete(k),
  };
}

function defaultStorage(): ConsentStorage {
  try {
    const ls = (globalThis as { localStorage?: ConsentStorage }).localStorage;
    if (ls) return ls;
  } catch {
    // localStorage access throws in some sandboxed iframes: fall through.
  }
  return memoryConsentStorage();
}

function parseDecision(text: string | null): ConsentDecision | null {
  if (text === null || text.length > 1024) return null;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (!isRecord(value) || typeof value.granted !== 'boolean' || typeof value.decidedAt !== 'number' ||
    !Array.isArray(value.services)) return null;
  const services = value.services.filter((s): s is Service => (SERVICES as readonly unknown[]).includes(s));
  return { granted: value.granted, services, decidedAt: value.decidedAt };
}

const sameSet = (a: readonly string[], b: readonly string[]): boolean =>
  a.length === b.length && a.every((x) => b.includes(x));

export class ConsentManager {
  readonly request: ConsentRequest;
  private readonly prompt: ConsentPrompt;
  private readonly storage: ConsentStorage;
  private readonly now: () => number;
  private readonly listeners = new Set<(d: ConsentDecision | null) => void>();
  private pending: Promise<boolean> | null = null;

  constructor(options: ConsentOptions) {
    this.request = {
      services: [...options.services],
      privacyCompliance: [...options.privacyCompliance],
      maxResources: { ...options.maxResources },
    };
    this.prompt = options.prompt ?? dialogConsentPrompt;
    this.storage = options.storage ?? defaultStorage();
    this.now = options.now ?? Date.now;
  }

  /** The stored decision if it still applies (same services, not expired), else null. */
  get decision(): ConsentDecision | null {
    let d: ConsentDecision | null;
    try {
      d = parseDecision(this.storage.getItem(STORAGE_KEY));
    } catch {
      return null;
    }
    if (!d || !sameSet(d.services, this.request.services)) return null;
    if (this.request.privacyCompliance.includes('gdpr') && this.now() - d.decidedAt > GDPR_CONSENT_MAX_AGE_MS) return null;
    return d;
  }

  get granted(): boolean {
    return this.decision?.granted === true;
  }

  /** Throws ConsentRequiredError unless the visitor has said yes. */
  assertGranted(): void {
    if (!this.granted) throw new ConsentRequiredError();
  }

  /** Asks the visitor unless a decision stands; resolves to the answer. Concurrent calls
   *  share one prompt. */
  async ask(signal?: AbortSignal): Promise<boolean> {
    throwIfAborted(signal);
    const standing = this.decision;
    if (standing) return standing.granted;
    this.pending ??= this.prompt(this.request, signal).then(
      (granted) => {
        this.record(granted === true);
        return granted === true;
      },
    ).finally(() => {
      this.pending = null;
    });
    return this.pending;
  }

  /** Records a decision made elsewhere (a site's own consent banner). */
  record(granted: boolean): void {
    const d: ConsentDecision = { granted, services: [...this.request.services], decidedAt: this.now() };
    try {
      this.storage.setItem(STORAGE_KEY, JSON.stringify(d));
    } catch {
      // Storage full or blocked: the decision holds for this page only.
    }
    for (const l of this.listeners) l(d);
  }

  /** Withdraws consent (GDPR art. 7(3): as easy as giving it). */
  revoke(): void {
    this.record(false);
  }

  /** Forgets the decision, so the next `ask` prompts again. */
  reset(): void {
    try {
      this.storage.removeItem(STORAGE_KEY);
    } catch {
      // nothing stored
    }
    for (const l of this.listeners) l(null);
  }

  onChange(listener: (d: ConsentDecision | null) => void): () => void {
    this.listeners.add(listener);
    return () => void this.listeners.delete(listener);
  }
}

const SERVICE_TEXT: Record<Service, string> = {
  compute: 'spare processing power to run AI models for others',
  storage: 'some disk space to hold model data for the network',
  identity: 'a pseudonymous identity key kept in this browser',
  carbon: 'an estimate of the energy your contribution uses',
};

/** The default prompt: a modal `<dialog>` in the page. Declines when there is no DOM. */
export const dialogConsentPrompt: ConsentPrompt = (request, signal) => {
  const doc = (globalThis as { document?: Document }).document;
  if (!doc?.body || typeof doc.createElement('dialog').showModal !== 'function') return Promise.resolve(false);
  throwIfAborted(signal);
  return new Promise<boolean>((resolve, reject) => {
    const dialog = doc.createElement('dialog');
    dialog.className = 'kwaainet-consent';
    dialog.setAttribute('aria-labelledby', 'kwaainet-consent-title');
    dialog.setAttribute('aria-describedby', 'kwaainet-consent-body');
    const title = doc.createElement('h2');
    title.id = 'kwaainet-consent-title';
    title.textContent = 'Contribute to KwaaiNet?';
    const body = doc.createElement('div');
    body.id = 'kwaainet-consent-body';
    const intro = doc.createElement('p');
    intro.textContent = `This site can share, while you are on it, at most ${request.maxResources.cpu}% CPU, ` +
      `${request.maxResources.memory} MB of memory and ${request.maxResources.storage} MB of storage with KwaaiNet, ` +
      'a community-run AI network. It would use:';
    const list = doc.createElement('ul');
    for (const s of request.services) {
      const li = doc.createElement('li');
      li.textContent = SERVICE_TEXT[s];
      list.append(li);
    }
    const rights = doc.createElement('p');
    rights.textContent = 'Nothing is shared unless you allow it, and you can withdraw at any time.' +
      (request.privacyCompliance.includes('ccpa') ? ' Your personal information is not sold.' : '');
    body.append(intro, list, rights);
    const decline = doc.createElement('button');
    decline.type = 'button';
    decline.textContent = 'No thanks';
    const allow = doc.createElement('button');
    allow.type = 'button';
    allow.textContent = 'Allow';
    const buttons = doc.createElement('p');
    buttons.append(decline, ' ', allow);
    dialog.append(title, body, buttons);

    const finish = (granted: boolean | null): void => {
      signal?.removeEventListener('abort', onAbort);
      dialog.close();
      dialog.remove();
      if (granted === null) reject(abortErrorFrom(signal as AbortSignal));
      else resolve(granted);
    };
    const onAbort = (): void => finish(null);
    decline.addEventListener('click', () => finish(false));
    allow.addEventListener('click', () => finish(true));
    dialog.addEventListener('cancel', (e) => {
      e.preventDefault();
      finish(false);
    });
    signal?.addEventListener('abort', onAbort, { once: true });
    doc.body.append(dialog);
    dialog.showModal();
    decline.focus(); // the safe default has focus
  });
};
