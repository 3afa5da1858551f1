// Small progressive enhancements; every page works without them.
// 1. [data-poll-url]: replace the element's contents with a server-rendered fragment every few seconds.
// 2. [data-preview-url] forms: show the live cohort preview as the researcher edits the filter.
(function () {
  "use strict";
  function poll(el) {
    var url = el.getAttribute("data-poll-url");
    var every = parseInt(el.getAttribute("data-poll-seconds") || "3", 10) * 1000;
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html === null) return;
          el.innerHTML = html;
          if (el.querySelector("[data-poll-stop]")) return;
          setTimeout(tick, every);
        })
        .catch(function () { setTimeout(tick, every * 2); });
    }
    setTimeout(tick, every);
  }
  function preview(form) {
    var url = form.getAttribute("data-preview-url");
    var out = document.getElementById(form.getAttribute("data-preview-target"));
    var timer = null;
    var latest = 0;
    function run() {
      var body = new FormData(form);
      var mine = ++latest;
      fetch(url, { method: "POST", body: body, credentials: "same-origin" })
        .then(function (r) {
          // A signed-out session is redirected to the login page: never paste a whole page here.
          if (r.redirected || !r.ok) return '<p class="muted">The preview is not available right now; the form still works.</p>';
          return r.text();
        })
        .then(function (html) { if (mine === latest) out.innerHTML = html; });
    }
    form.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(run, 400); });
    form.addEventListener("change", function () { clearTimeout(timer); timer = setTimeout(run, 100); });
    run();
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-poll-url]").forEach(poll);
    document.querySelectorAll("form[data-preview-url]").forEach(preview);
  });
})();
