// Makes the demo an installable app that opens offline: registers the site's service worker
// (app-sw.js: the offline shell). `document.documentElement.dataset.offline` says when the
// shell is cached ('ready') or why not.
const root = document.documentElement;
if ('serviceWorker' in navigator && window.isSecureContext) {
  navigator.serviceWorker.register('app-sw.js', { scope: './' })
    .then(() => navigator.serviceWorker.ready)
    .then(() => { root.dataset.offline = 'ready'; })
    .catch((err) => {
      root.dataset.offline = 'unavailable';
      console.warn('KwaaiNet: no offline shell:', err);
    });
} else {
  root.dataset.offline = 'unavailable';
}
