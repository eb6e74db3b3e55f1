// The status page stays current without a reload: each event on the change stream (and
// a minute passing) re-renders the page on the server and swaps its <main> in place.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var main = document.getElementById("status");
  if (!main || !window.EventSource || !window.fetch) { return; }
  var pending = null;
  var busy = false;

  function refresh() {
    pending = null;
    if (busy) { pending = setTimeout(refresh, 250); return; }
    busy = true;
    fetch(window.location.href, { headers: { Accept: "text/html" }, cache: "no-store", credentials: "same-origin" })
      .then(function (response) { return response.text(); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("status");
        if (fresh) { main.innerHTML = fresh.innerHTML; document.title = new DOMParser().parseFromString(html, "text/html").title; }
      })
      .catch(function () { /* the next event or the minute's refresh tries again */ })
      .then(function () { busy = false; });
  }

  function soon() { if (pending === null) { pending = setTimeout(refresh, 200); } }

  var stream = new EventSource(main.getAttribute("data-events"));
  ["change", "start", "gap"].forEach(function (kind) { stream.addEventListener(kind, soon); });
  stream.onopen = function () { live.textContent = "Updates live."; };
  stream.onerror = function () { live.textContent = "Reconnecting to live updates\u2026"; };
  setInterval(refresh, 60000);
})();
