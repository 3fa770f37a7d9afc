// The privacy page: this visitor's identity at the node that served the page (its level,
// the upgrades: an email token, a passkey made by the browser; sign-in with a passkey),
// consent per purpose (signed records the node logs; the contribution switch is the SDK's
// own consent), export and erasure, and the node's audit log checked here.
import { bindAuditVerify, bindDataRights } from './rights-ui.mjs';

const $ = (id) => document.getElementById(id);
const say = (id, text) => { $(id).textContent = text; };

async function main() {
  const Network = window.KwaaiNetwork;
  const tag = document.querySelector('script[src*="distributed-ai"]');
  if (!Network || !tag) throw new Error('the KwaaiNet bundle did not load');
  // One identity across visits: the page's key stays in this origin's IndexedDB.
  const net = Network.fromCdn(new URL('./', tag.src).href, { identity: 'persistent' });
  window.privacyNetwork = net;
  const st = await fetch('/api/v1/state', { cache: 'no-store' }).then((r) => (r.ok ? r.json() : Promise.reject(new Error('HTTP ' + r.status))));
  if (!Array.isArray(st.browser_addrs) || st.browser_addrs.length === 0) throw new Error('the node lists no browser address');
  await net.connect(st.browser_addrs);
  say('network-status', 'Joined the node ' + net.bootstrapPeer.slice(0, 16) + '… as ' + net.did.slice(0, 24) + '…');
  const node = net.bootstrapPeer;
  const origin = location.origin;

  const showIdentity = async () => {
    const s = await net.identityStatus(origin, node);
    say('id-level', s.level);
    say('id-did', s.subject);
    const p = s.permissions;
    say('id-permissions', [p.contribute && 'contribute', p.store && 'store ' + Math.round(p.quota_bytes / 1048576) + ' MiB',
      p.recover && 'sign in elsewhere', p.portable && 'take it to other nodes'].filter(Boolean).join(', '));
    $('id-links').replaceChildren(...s.links.map((l) => {
      const link = JSON.parse(l.link);
      const li = document.createElement('li');
      li.textContent = link.level + ': ' + link.credential.split(':')[0] + ' linked ' + new Date(link.at_ms).toLocaleString() + ' (signed by the node)';
      return li;
    }));
    return s;
  };
  const act = (what, run) => async (e) => {
    e?.preventDefault?.();
    say('id-state', what + '…');
    try {
      say('id-state', await run());
      await showIdentity();
    } catch (err) {
      say('id-state', what + ' failed: ' + err.message);
    }
  };
  $('email-form').addEventListener('submit', act('Sending a token', async () => {
    const r = await net.linkEmail(origin, node, $('email').value);
    return 'A token was sent to ' + r.sentTo + ' (valid ' + Math.round(r.expiresInS / 60) + ' minutes).';
  }));
  $('token-form').addEventListener('submit', act('Confirming', async () => {
    const r = await net.confirmEmail(origin, $('token').value);
    return 'Email confirmed: your level is ' + r.level + '.';
  }));
  $('passkey-add').addEventListener('click', act('Making a passkey', async () => {
    const r = await net.registerPasskey(origin, node);
    return 'Passkey linked: your level is ' + r.level + '.';
  }));
  $('passkey-signin').addEventListener('click', act('Signing in', async () => {
    const r = await net.loginPasskey(origin, { peerId: node });
    return 'Signed in as ' + r.subject.slice(0, 24) + '… (' + r.level + '): this browser now acts for it.';
  }));
  await showIdentity();

  // Consent per purpose. Global Privacy Control means no to the optional ones.
  const gpc = navigator.globalPrivacyControl === true;
  $('gpc').hidden = !gpc;
  const ai = window.kwaainet;
  $('purpose-compute').checked = ai?.consent.decision?.granted === true;
  for (const id of ['purpose-storage', 'purpose-analytics']) $(id).disabled = gpc;
  $('consent-save').addEventListener('click', async () => {
    const purposes = {
      compute: $('purpose-compute').checked,
      storage: $('purpose-storage').checked && !gpc,
      analytics: $('purpose-analytics').checked && !gpc,
    };
    // Contribution goes through the SDK's own consent: withdrawing stops it at once.
    if (ai) {
      if (!purposes.compute && ai.consent.decision?.granted) ai.consent.revoke();
      if (purposes.compute && !ai.consent.decision?.granted) {
        ai.consent.reset();
        purposes.compute = await ai.consent.ask().catch(() => false);
        $('purpose-compute').checked = purposes.compute;
      }
    }
    try {
      const r = await net.recordConsent(origin, purposes);
      say('consent-record', 'Recorded by the node (' + r.recorded + ' entries), signed as ' + r.subject.slice(0, 20) + '…: ' +
        Object.entries(purposes).map(([k, v]) => k + ' ' + (v ? 'yes' : 'no')).join(', ') + (r.gpc ? ' (Global Privacy Control)' : '') + '.');
    } catch (e) {
      say('consent-record', 'The node did not record your choices: ' + e.message);
    }
  });

  bindDataRights(net, { exportButton: $('data-export'), eraseButton: $('data-erase'), state: $('data-state'), link: $('data-download') },
    () => { showIdentity().catch(() => {}); });
  bindAuditVerify(net, { button: $('audit-verify'), state: $('audit-state'), entries: $('audit-entries') });
  document.body.dataset.ready = 'true';
}

main().catch((e) => { say('network-status', 'Not joined: ' + e.message); });
