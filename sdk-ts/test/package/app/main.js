// A minimal app on the packed @kwaainet/sdk, built by Vite. `?three` runs README's three
// lines as written (no initialize(), one request); otherwise query parameters pick the
// host, the service-worker URL and the model, and the instance's events are recorded for
// the package test to read back.
import { KwaaiNet, KwaaiNetwork } from '@kwaainet/sdk';

const query = new URLSearchParams(location.search);
const record = { status: [], progress: 0, ready: false, error: null, answer: null };
window.__kw = record;
window.KwaaiNetwork = KwaaiNetwork;
const state = document.getElementById('state');
const fail = (err) => {
  record.error = `${err.name}: ${err.message}`;
  state.textContent = record.error;
};

const modelUrl = query.get('model') ?? '/models/model.gguf';
const modelSha256 = query.get('sha') ?? undefined;

if (query.has('three')) {
  const ai = new KwaaiNet({ modelUrl, modelSha256 });
  const ask = ai.chat.completions.create({ messages: [{ role: 'user', content: 'What is the capital of France?' }], max_tokens: 32 });
  window.kwaainet = ai;
  ask.then((answer) => {
    record.answer = { text: answer.choices[0].message.content, ids: answer.choices[0].token_ids };
    record.ready = true;
    state.textContent = record.answer.text;
  }, fail);
} else {
  const options = { modelUrl, modelSha256, contextLength: 512 };
  if (query.has('host')) options.host = query.get('host');
  if (query.has('sw')) options.serviceWorkerUrl = query.get('sw') === 'none' ? null : query.get('sw');
  const ai = new KwaaiNet(options);
  window.kwaainet = ai;
  ai.on('progress', () => record.progress++);
  ai.on('status', (s) => record.status.push({ state: s.state, host: s.host ?? null, reason: s.reason ?? null }));
  ai.initialize().then(() => {
    record.ready = true;
    state.textContent = 'ready';
  }, fail);
}
