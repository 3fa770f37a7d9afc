import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { ConsentManager, GDPR_CONSENT_MAX_AGE_MS, memoryConsentStorage, type ConsentPrompt } from '../src/consent.js';
import { ConsentRequiredError } from '../src/errors.js';
import { KwaaiNet, type ContributionEvent } from '../src/kwaainet.js';
import { DEFAULT_MAX_RESOURCES } from '../src/resources.js';

const base = { services: ['compute', 'storage'] as const, privacyCompliance: ['gdpr'] as const, maxResources: DEFAULT_MAX_RESOURCES };

function prompter(answer: boolean): ConsentPrompt & { calls: number } {
  const p = Object.assign(async () => {
    p.calls++;
    await new Promise((r) => setTimeout(r, 5));
    return answer;
  }, { calls: 0 });
  return p;
}

describe('consent', () => {
  it('is not granted until the visitor says yes; concurrent asks share one prompt', async () => {
    const storage = memoryConsentStorage();
    const prompt = prompter(true);
    const c = new ConsentManager({ ...base, storage, prompt });
    assert.equal(c.granted, false);
    assert.throws(() => c.assertGranted(), ConsentRequiredError);
    const [a, b] = await Promise.all([c.ask(), c.ask()]);
    assert.equal(a && b, true);
    assert.equal(prompt.calls, 1);
    assert.equal(c.granted, true);
  });

  it('persists the decision and asks again when the services change or GDPR consent expires', async () => {
    const storage = memoryConsentStorage();
    let now = 1_000;
    await new ConsentManager({ ...base, storage, prompt: prompter(true), now: () => now }).ask();
    const again = prompter(false);
    const same = new ConsentManager({ ...base, storage, prompt: again, now: () => now });
    assert.equal(same.granted, true, 'remembered across page loads');
    assert.equal(await same.ask(), true);
    assert.equal(again.calls, 0);
    const more = new ConsentManager({ ...base, services: ['compute', 'storage', 'identity'], storage, prompt: again, now: () => now });
    assert.equal(more.granted, false, 'a new service needs a new yes');
    now += GDPR_CONSENT_MAX_AGE_MS + 1;
    assert.equal(same.granted, false, 'GDPR consent expires');
    const ccpaOnly = new ConsentManager({ ...base, privacyCompliance: ['ccpa'], storage, prompt: again, now: () => now });
    assert.equal(ccpaOnly.granted, true, 'no expiry without GDPR');
  });

  it('can be withdrawn, and ignores a garbled stored record', async () => {
    const storage = memoryConsentStorage();
    const c = new ConsentManager({ ...base, storage, prompt: prompter(true) });
    await c.ask();
    c.revoke();
    assert.equal(c.granted, false);
    storage.setItem('kwaainet:consent:v1', '{"granted":true,"services":"compute"');
    assert.equal(c.decision, null);
  });

  it('gates contribution in the SDK: nothing starts before consent', async () => {
    const events: ContributionEvent[] = [];
    const declined = new KwaaiNet({
      services: 'compute,storage', privacyCompliance: 'gdpr,ccpa', consentPrompt: prompter(false), consentStorage: memoryConsentStorage(),
    });
    declined.on('contribution', (e) => events.push(e));
    await assert.rejects(declined.startContributing(), ConsentRequiredError);
    assert.equal(events.at(-1)?.state, 'declined');
    assert.equal(events.at(-1)?.consent, false);

    const granted = new KwaaiNet({ services: ['compute'], maxResources: 'cpu:10', consentPrompt: prompter(true), consentStorage: memoryConsentStorage() });
    const seen: ContributionEvent[] = [];
    granted.on('contribution', (e) => seen.push(e));
    const duty = await granted.startContributing();
    assert.equal(duty.cpuPercent, 10);
    assert.equal(seen.at(-1)?.state, 'idle');
    assert.equal(seen.at(-1)?.consent, true);
  });
});
