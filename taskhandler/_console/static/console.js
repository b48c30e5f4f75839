// The queue console refreshes its live part (#live) from a JSON endpoint every few seconds,
// without reloading the page: scroll position, open details and the search box stay as they are.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var status = document.getElementById("live-status");
  if (!live || !live.dataset.src) { return; }
  var every = 3000;
  var last = null;
  function busy() {
    var active = document.activeElement;
    return active && live.contains(active) && active.tagName !== "BODY";
  }
  function refresh() {
    if (document.hidden || busy()) { return schedule(); }
    fetch(live.dataset.src, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (data) {
        if (data.html !== last) {
          // Keep open what the reader opened (a traceback, say).
          var open = [];
          live.querySelectorAll("details").forEach(function (d, i) { if (d.open) { open.push(i); } });
          last = data.html;
          live.innerHTML = data.html;
          var all = live.querySelectorAll("details");
          open.forEach(function (i) { if (all[i]) { all[i].open = true; } });
        }
        if (status) { status.textContent = "updated " + new Date().toLocaleTimeString(); }
      })
      .catch(function (error) {
        if (status) { status.textContent = "not updated: " + error.message; }
      })
      .then(schedule);
  }
  function schedule() { window.setTimeout(refresh, every); }
  schedule();
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });
})();
