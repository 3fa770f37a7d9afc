// The demo's UI. Everything KwaaiNet-specific comes from window.kwaainet and
// window.KwaaiNetwork, which the one-line script tag created; no other SDK import.
(function () {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const ai = window.kwaainet;
  const history = [];
  let controller = null;

  const MB = (n) => (n / 1048576).toFixed(1) + ' MB';
  function setList(dl, rows) {
    dl.replaceChildren(...rows.flatMap(([k, v]) => {
      const dt = document.createElement('dt');
      dt.textContent = k;
      const dd = document.createElement('dd');
      dd.textContent = String(v);
      return [dt, dd];
    }));
  }
  function addMessage(role, text) {
    const li = document.createElement('li');
    li.className = role;
    li.textContent = text;
    $('log').append(li);
    li.scrollIntoView({ block: 'nearest' });
    return li;
  }
  function busy(on) {
    $('send').disabled = on;
    $('stop').disabled = !on;
    $('log').setAttribute('aria-busy', String(on));
  }

  if (!ai) {
    $('status').textContent = 'KwaaiNet did not start (see the console).';
    document.addEventListener('kwaainet:error', (e) => {
      $('status').textContent = 'KwaaiNet did not start: ' + e.detail.error.message;
    });
    return;
  }

  setList($('resources'), [
    ['Services', ai.services.join(', ') || 'none'],
    ['Privacy', ai.privacyCompliance.join(', ').toUpperCase() || '—'],
    ['CPU', ai.maxResources.cpu + ' %'],
    ['Memory', ai.maxResources.memory + ' MB'],
    ['Storage', ai.maxResources.storage + ' MB'],
  ]);

  ai.on('progress', (p) => {
    $('progress').value = p.fraction;
    $('progress-label').textContent = { download: 'Downloading the model', verify: 'Verifying', load: 'Loading' }[p.phase];
    $('progress-text').textContent = p.total ? MB(p.loaded) + ' of ' + MB(p.total) : MB(p.loaded);
  });
  ai.on('status', (s) => {
    const text = {
      starting: 'Starting…',
      loading: 'Engine host: ' + s.host + '. Preparing the model…',
      ready: s.modelLoaded ? 'Ready.' : 'Ready (no model configured).',
      crashed: 'The engine stopped (' + (s.error && s.error.message) + '). It restarts with your next message.',
      restarting: 'Restarting the engine…',
      error: 'Error: ' + (s.error && s.error.message),
      disposed: 'Stopped.',
    }[s.state];
    $('status').textContent = text;
    if (s.state === 'ready') {
      $('send').disabled = controller !== null;
      $('progress').value = 1;
      showEngine();
    }
  });
  ai.on('contribution', (c) => {
    $('consent-state').textContent = {
      'consent-needed': 'You have not decided whether to contribute. Nothing is shared.',
      declined: 'You declined. Nothing is shared.',
      idle: 'Thank you: you agreed to contribute up to ' + c.cpuPercent + ' % CPU.',
      serving: 'Thank you: this tab serves blocks to the network, at most ' + c.cpuPercent + ' % CPU.',
    }[c.state];
    // What this tab has served: the span server's own counters (the ones a node shows).
    const s = c.served;
    if (s) {
      setList($('served'), [
        ['Span', 'blocks ' + s.start + '..' + s.end + (s.state === 'serving' ? '' : s.state === 'paused' ? ' (paused: ' + s.pausedBecause + ')' : ' (' + s.state + ')')],
        ['Sessions', s.sessions + ' (' + s.sessionsOpen + ' open)'],
        ['Tokens', s.tokens],
        ['Block × tokens', s.blockTokens],
        ['Busy', s.busySeconds.toFixed(2) + ' s'],
        ['Energy', (s.energyUwh / 1000).toFixed(2) + ' mWh, ' + (s.carbonUg / 1000).toFixed(2) + ' mg CO₂e (' + s.method + ', ' + s.deviceClass + ')'],
        ['Received', (s.bytesIn / 1024).toFixed(1) + ' KB'],
        ['Sent', (s.bytesOut / 1024).toFixed(1) + ' KB'],
      ]);
    }
  });
  ai.on('environmentalImpact', (e) => {
    $('impact').textContent = 'Estimated energy so far: ' + (e.totalEnergyUwh / 1000).toFixed(2) + ' mWh (' +
      (e.totalCarbonUg / 1000).toFixed(2) + ' mg CO₂e), ' + e.method + ' for a ' + e.deviceClass + ' on the ' +
      e.gridRegion + ' grid (' + e.gridYear + ' data).';
  });

  async function showEngine() {
    const info = await ai.engineInfo().catch(() => null);
    if (!info) return;
    const m = info.model;
    setList($('engine'), [
      ['Host', info.host],
      ['Why', info.reason],
      ['Backend', info.backend + (info.simd128 ? ' (simd128)' : '')],
      ['Because', info.backendReason || '—'],
      ['Threads', info.backend === 'cpu-wasm' ? info.threads + ' (' + info.threadsReason + ')' : '—'],
      ['WebGPU', info.gpuAvailable ? 'available' : 'not available'],
      ['Adapter', info.adapter || '—'],
      ['Engine', info.engineVersion],
      ['Model', m ? (m.name || m.architecture) : '—'],
      ['Weights', m ? MB(m.weightBytes) : '—'],
      ['Context', m ? m.maxCtx + ' tokens' : '—'],
    ].concat(limitRows(info)));
  }

  /** The engine's limits, and the WebGPU device's, when a model is loaded. */
  function limitRows(info) {
    const l = info.limits;
    if (!l) return [];
    const rows = [
      ['Max context', l.maxCtxTokens + ' of ' + l.ctxLimitTokens + ' tokens'],
      ['KV cache', MB(l.kvCacheBytes)],
      ['Model file', MB(l.modelBytes)],
      ['WASM memory', MB(l.wasmMemoryBytes) + ' of ' + MB(l.wasmMemoryMaxBytes)],
      ['SIMD128', l.simd128 ? 'yes' : 'no'],
    ];
    const g = info.gpu;
    if (g) {
      const gl = g.limits;
      rows.push(
        ['GPU adapter', (g.adapter || '(no description)') + (g.fallbackAdapter ? ' (software)' : '')],
        ['Max buffer', MB(gl.maxBufferSize)],
        ['Max storage binding', MB(gl.maxStorageBufferBindingSize)],
        ['Workgroup storage', gl.maxComputeWorkgroupStorageSize + ' B'],
        ['Invocations / workgroup', String(gl.maxComputeInvocationsPerWorkgroup)],
        ['Workgroup size', gl.maxComputeWorkgroupSizeX + ' × ' + gl.maxComputeWorkgroupSizeY + ' × ' + gl.maxComputeWorkgroupSizeZ],
      );
    }
    return rows;
  }

  $('chat-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const text = $('prompt').value.trim();
    if (!text || controller) return;
    $('prompt').value = '';
    addMessage('user', text);
    history.push({ role: 'user', content: text });
    const out = addMessage('assistant', '');
    controller = new AbortController();
    busy(true);
    // The route of an answer through the swarm (the SDK's `swarm` event).
    let through = null;
    let off = null;
    try {
      const route = $('route').value === 'swarm' ? 'swarm' : 'local';
      off = ai.on('swarm', (r) => { through = r; });
      const stream = await ai.chat.completions.create(
        { messages: history, stream: true, max_tokens: 256 }, { signal: controller.signal, route },
      );
      for await (const chunk of stream) {
        out.textContent += chunk.choices[0]?.delta.content ?? '';
        if (chunk.usage) {
          const x = chunk.usage.extra;
          $('status').textContent = 'Ready. Last answer: ' + chunk.usage.completion_tokens + ' tokens' +
            (x ? ', ' + x.decode_tokens_per_s.toFixed(1) + ' tokens/s' : '') + '.';
        }
      }
      if (through) {
        $('status').textContent += ' Through the swarm: ' + through.route.map((h) => h.start + '..' + h.end).join(', ') +
          ' on ' + new Set(through.route.map((h) => h.server)).size + ' peer(s)' +
          (through.failovers ? ', ' + through.failovers + ' failover(s)' : '') + '.';
      }
      history.push({ role: 'assistant', content: out.textContent });
    } catch (err) {
      if (err.name === 'AbortError') {
        out.textContent += ' [stopped]';
        history.push({ role: 'assistant', content: out.textContent });
      } else {
        out.className = 'error';
        out.textContent = 'Error: ' + err.message;
        history.pop();
      }
    } finally {
      if (off) off();
      controller = null;
      busy(false);
      $('prompt').focus();
    }
  });
  $('prompt').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      $('chat-form').requestSubmit();
    }
  });
  $('stop').addEventListener('click', () => controller && controller.abort());
  $('clear').addEventListener('click', () => {
    history.length = 0;
    $('log').replaceChildren();
  });
  $('delete-model').addEventListener('click', async () => {
    await ai.deleteModel().catch((e) => ($('status').textContent = e.message));
    $('progress').value = 0;
    $('status').textContent = 'The cached model was deleted; it downloads again with your next message.';
  });
  $('consent-allow').addEventListener('click', () => {
    ai.consent.reset();
    ai.startContributing().catch(() => {});
  });
  $('consent-withdraw').addEventListener('click', () => ai.consent.revoke());

  ai.ready.then(showEngine, () => {});
})();

// The page's own P2P node: when a KwaaiNet node (`kwaainet start`, `npm start`) serves this
// page, join the network through it (WebRTC-direct, else WebSocket) and show the link.
(function () {
  'use strict';
  const status = document.getElementById('network-status');
  const list = document.getElementById('network');
  const Network = window.KwaaiNetwork;
  const tag = document.querySelector('script[src*="distributed-ai"]');
  if (!Network || !tag || !status) return;
  const show = (rows) => list.replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement('dt');
    dt.textContent = k;
    const dd = document.createElement('dd');
    dd.textContent = String(v);
    return [dt, dd];
  }));
  let net;
  try {
    net = Network.fromCdn(new URL('./', tag.src).href);
  } catch (e) {
    status.textContent = 'Not in this bundle: ' + e.message;
    return;
  }
  const peers = new Set();
  let last = { status: 'idle' };
  const render = (s) => {
    last = s;
    const text = {
      connecting: 'Joining…',
      connected: 'Joined over ' + (s.transport || '?') + (s.setupMs ? ' in ' + Math.round(s.setupMs) + ' ms' : ''),
      reconnecting: 'Node gone: retry ' + s.attempt + ' in ' + (s.delayMs / 1000).toFixed(1) + ' s',
      offline: 'Offline: ' + (s.reason || ''),
      closed: 'Closed',
    }[s.status];
    if (text) status.textContent = text;
    show([['Our peer id', net.peerId || '—'], ['Node', net.bootstrapPeer || '—'], ['Peers', peers.size]]);
  };
  net.on('status', render);
  net.on('status', (s) => { if (s.status === 'connected') showAudit(); });
  window.kwaainetNetwork = net;

  // The audit log: this visitor's consent decisions go to the node as records signed with
  // the page's key (the node logs them), and the Verify button checks the node's whole log
  // (its signed checkpoint, every entry, and that it only grew since the last check).
  let audited = false;
  function sendConsent(d) {
    const line = document.getElementById('consent-record');
    if (!d || net.status !== 'connected') return;
    net.recordConsent(location.origin, { compute: d.granted, storage: d.granted, analytics: false })
      .then((r) => { line.textContent = 'Your decision is in the node\'s audit log (' + r.recorded + ' entries), signed as ' + r.subject.slice(0, 20) + '…' + (r.gpc ? ' (Global Privacy Control: no data sharing)' : '') + '.'; },
        (e) => { line.textContent = 'The node did not record your decision: ' + e.message; });
  }
  function showAudit() {
    const section = document.getElementById('audit');
    if (!section || audited) return;
    audited = true;
    section.hidden = false;
    const ai = window.kwaainet;
    if (ai) {
      sendConsent(ai.consent.decision);
      ai.consent.onChange(sendConsent);
    }
    const $ = (id) => document.getElementById(id);
    import('./rights-ui.mjs').then(({ bindAuditVerify, bindDataRights }) => {
      bindAuditVerify(net, { button: $('audit-verify'), state: $('audit-state'), entries: $('audit-entries') });
      bindDataRights(net, { exportButton: $('data-export'), eraseButton: $('data-erase'), state: $('data-state'), link: $('data-download') });
    }, (e) => { $('audit-state').textContent = 'Could not load the audit controls: ' + e.message; });
  }
  net.on('peerConnected', (p) => { peers.add(p.peer); render(last); });
  net.on('peerDisconnected', (p) => { peers.delete(p.peer); render(last); });
  // The swarm's coverage of each model the node reports (/api/v1/state's `models`), as a
  // picture (coverage.mjs), refreshed every 10 s while the node answers.
  const models = document.getElementById('swarm-models');
  const showModels = (reports) => {
    if (!models || !Array.isArray(reports)) return;
    import('./coverage.mjs').then(({ draw }) => {
      models.replaceChildren(...reports.slice(0, 8).map((r) => {
        const fig = document.createElement('figure');
        const cap = document.createElement('figcaption');
        const servers = Array.isArray(r.servers) ? r.servers.length : 0;
        cap.textContent = String(r.model) + ': ' + servers + ' server' + (servers === 1 ? '' : 's') +
          (r.complete ? ', every block served' : ', some blocks have no server');
        fig.append(cap, draw(r, document));
        return fig;
      }));
    }, () => {});
  };
  let failures = 0;
  let latest = null;
  const poll = () => fetch('/api/v1/state', { cache: 'no-store' })
    .then((r) => (r.ok ? r.json() : Promise.reject(new Error('HTTP ' + r.status))))
    .then((st) => { failures = 0; latest = st; showModels(st.models); })
    .catch(() => { if (++failures >= 3) clearInterval(refresh); });
  // Faster while this tab serves: its own bar should appear (and go) soon after it acts.
  let refresh = setInterval(poll, 10000);
  const pollSoon = () => {
    clearInterval(refresh);
    refresh = setInterval(poll, 2000);
    setTimeout(() => { clearInterval(refresh); refresh = setInterval(poll, 10000); }, 30000);
  };

  // Serving blocks of the node's model from this tab: the node's first model report says
  // how many blocks there are; the page suggests the first run of blocks nobody serves (a
  // second visitor opened from here gets the rest: ?serve=A-B).
  const serve = document.getElementById('serve');
  const $id = (id) => document.getElementById(id);
  let span = null;
  const setServeState = (text) => { $id('serve-state').textContent = text; };
  function offerServing(st) {
    const ai = window.kwaainet;
    const report = Array.isArray(st.models) ? st.models[0] : null;
    if (!serve || !ai || !report || !Number.isInteger(report.blocks) || report.blocks < 1) return;
    const blocks = report.blocks;
    let start = 0;
    let end = blocks;
    const asked = /^(\d{1,4})-(\d{1,4})$/.exec(new URLSearchParams(location.search).get('serve') || '');
    if (asked && Number(asked[1]) < Number(asked[2]) && Number(asked[2]) <= blocks) {
      start = Number(asked[1]);
      end = Number(asked[2]);
    } else if (Array.isArray(report.coverage)) {
      const free = report.coverage.findIndex((n) => n === 0);
      if (free >= 0) {
        start = free;
        end = free;
        while (end < blocks && report.coverage[end] === 0) end++;
        // Half of the free run, so that a second visitor has the rest to serve.
        if (end - start > 1) end = start + Math.ceil((end - start) / 2);
      }
    }
    $id('serve-start').max = String(blocks - 1);
    $id('serve-end').max = String(blocks);
    $id('serve-start').value = String(start);
    $id('serve-end').value = String(end);
    const rest = end < blocks ? end + '-' + blocks : start > 0 ? '0-' + start : '';
    const link = new URL(location.href);
    if (rest) link.searchParams.set('serve', rest);
    $id('second-visitor').href = link.href;
    serve.hidden = false;
    setServeState('This tab can serve blocks of ' + report.model + ' (' + blocks + ' blocks) to the network.');
  }
  if (serve) {
    $id('serve-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const ai = window.kwaainet;
      if (span || !ai) return;
      const start = Number($id('serve-start').value);
      const end = Number($id('serve-end').value);
      $id('serve-button').disabled = true;
      setServeState('Loading blocks ' + start + '..' + end + '…');
      ai.serveSpan(net, { start, end }).then((s) => {
        span = s;
        $id('serve-stop').disabled = false;
        setServeState('Serving blocks ' + start + '..' + end + ' of ' + s.modelId + ' (about ' + Math.round(s.throughput) + ' tokens/s a block).');
        s.on('withdrawn', (w) => {
          span = null;
          $id('serve-button').disabled = false;
          $id('serve-stop').disabled = true;
          setServeState('Stopped serving (' + w.reason + ').');
          pollSoon();
        });
        pollSoon();
      }, (err) => {
        $id('serve-button').disabled = false;
        setServeState('Could not serve: ' + err.message);
      });
    });
    $id('serve-stop').addEventListener('click', () => { if (span) span.withdraw(); });
  }
  // Only a node's own HTTP side has /api/v1/state; the static demo server has not.
  fetch('/api/v1/state', { cache: 'no-store' })
    .then((r) => (r.ok ? r.json() : Promise.reject(new Error('HTTP ' + r.status))))
    .then((st) => {
      showModels(st.models);
      if (!Array.isArray(st.browser_addrs) || st.browser_addrs.length === 0) throw new Error('the node lists no browser address');
      return net.connect(st.browser_addrs).then(() => {
        render(last);
        offerServing(latest || st);
        // Chat through the swarm from this tab: its embedding and head here, the blocks on
        // the peers serving them (a cross-origin-isolated page only: see the SDK's README).
        const ai = window.kwaainet;
        const option = document.getElementById('route-swarm');
        if (ai && option && window.crossOriginIsolated) {
          ai.useNetwork(net);
          option.disabled = false;
        }
      });
    })
    .catch((e) => {
      if (net.status === 'idle') status.textContent = 'No KwaaiNet node serves this page (npm start runs one): ' + e.message;
    });
})();
