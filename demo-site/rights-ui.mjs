// The data-rights and audit controls shared by the demo page and the privacy page: the
// node's tamper-evident log checked in the page (its signed checkpoint, every entry, and
// that it only grew since the last check), this visitor's export (verified here before it
// is shown; the saved bundle verifies offline) and erasure (answered by a signed receipt).

/** Binds the Verify button: `els` = { button, state, entries }. */
export function bindAuditVerify(net, els) {
  let kept = null;
  els.button.addEventListener('click', () => {
    els.state.textContent = 'Checking…';
    net.verifyAudit(location.origin, net.bootstrapPeer, kept ? { since: kept } : {}).then((v) => {
      els.state.textContent = 'Verified: ' + v.checkpoint.size + ' entries under a checkpoint signed by the node' +
        (v.consistentWith !== null ? ', and the log only grew since the last check (' + v.consistentWith + ')' : '') + '.';
      kept = v.checkpoint;
      els.entries.replaceChildren(...v.entries.slice(-10).map((e) => {
        const li = document.createElement('li');
        li.textContent = new Date(e.time_ms).toLocaleTimeString() + ' ' + e.op + ' ' + (e.purpose || '') + ' ' +
          (e.decision || '') + (e.reason ? ' (' + e.reason + ')' : '');
        return li;
      }));
    }, (e) => { els.state.textContent = 'Check failed: ' + e.message; });
  });
}

/** Binds Download my data / Delete my data: `els` = { exportButton, eraseButton, state,
 *  link }; `onErased` runs after a confirmed erasure. */
export function bindDataRights(net, els, onErased = () => {}) {
  els.exportButton.addEventListener('click', () => {
    els.state.textContent = 'Asking the node…';
    net.exportData(location.origin, net.bootstrapPeer).then(({ bundle, verified }) => {
      els.state.textContent = 'Your data, verified: ' + verified.consents.length + ' consent record(s), ' +
        verified.entries.length + ' audit entries proven in the node\'s signed log, ' + verified.manifest.items.length + ' item(s).';
      if (els.link.href) URL.revokeObjectURL(els.link.href);
      els.link.href = URL.createObjectURL(new Blob([JSON.stringify(bundle)], { type: 'application/json' }));
      els.link.hidden = false;
    }, (e) => { els.state.textContent = 'Export failed: ' + e.message; });
  });
  els.eraseButton.addEventListener('click', () => {
    els.state.textContent = 'Asking the node…';
    net.eraseData(location.origin, net.bootstrapPeer).then(({ erasure }) => {
      els.state.textContent = 'Erased, receipt signed by the node: ' + erasure.deleted.length + ' item(s) deleted' +
        (erasure.audit_unlinked ? ', your audit entries unlinked from you' : '') + '.';
      els.link.hidden = true;
      onErased(erasure);
    }, (e) => { els.state.textContent = 'Erasure failed: ' + e.message; });
  });
}
