// Refreshes the live part of the page in place every few seconds: no reload,
// no flicker, the scroll position and the filter field untouched. Without
// JavaScript the page reloads itself (a <noscript> refresh) instead.
(function () {
  'use strict';
  var live = document.getElementById('live');
  var stamp = document.getElementById('refreshed');
  if (!live || !window.fetch) return;
  var period = parseInt(live.getAttribute('data-refresh-ms'), 10) || 5000;
  var busy = false;
  function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    fetch('/live' + window.location.search, { credentials: 'same-origin', cache: 'no-store' })
      .then(function (r) {
        if (!r.ok) throw new Error('HTTP ' + r.status);
        return r.text();
      })
      .then(function (html) {
        // The fragment is the server's own template output: everything from
        // the bucket in it is already escaped.
        live.innerHTML = html;
        if (stamp) stamp.textContent = 'updated ' + new Date().toLocaleTimeString();
      })
      .catch(function (e) {
        if (stamp) stamp.textContent = 'refresh failed (' + e.message + '); retrying';
      })
      .then(function () { busy = false; });
  }
  setInterval(refresh, period);
})();
