// A minimal app on the packed @kwaainet/sdk, built by Vite: what README "npm" shows, plus
// query parameters the package test uses to pick the host and the service-worker URL, and
// a record of the instance's events it reads back.
import { KwaaiNet, KwaaiNetwork } from '@kwaainet/sdk';

const query = new URLSearchParams(location.search);
const options = {
  modelUrl: query.get('model') ?? '/models/model.gguf',
  modelSha256: query.get('sha') ?? undefined,
  contextLength: 512,
};
if (query.has('host')) options.host = query.get('host');
if (query.has('sw')) options.serviceWorkerUrl = query.get('sw') === 'none' ? null : query.get('sw');

const record = { status: [], progress: 0, ready: false, error: null };
window.__kw = record;
window.KwaaiNetwork = KwaaiNetwork;

const ai = new KwaaiNet(options);
window.kwaainet = ai;
ai.on('progress', () => record.progress++);
ai.on('status', (s) => record.status.push({ state: s.state, host: s.host ?? null, reason: s.reason ?? null }));
const state = document.getElementById('state');
ai.initialize().then(
  () => {
    record.ready = true;
    state.textContent = 'ready';
  },
  (err) => {
    record.error = `${err.name}: ${err.message}`;
    state.textContent = record.error;
  },
);
