// qci's pages: the monitor reloads itself, and a job's page follows its log
// live. Served as /static/qci.js so that the pages carry no inline script
// and their policy can say script-src 'self'. What it needs from a page
// comes in data- attributes (data-reload-ms, data-events), never in code;
// text from outside reaches the page only through textContent.
'use strict';

function follow(log, url) {
  var es = new EventSource(url);
  es.onmessage = function (e) {
    var end = window.innerHeight + window.scrollY >= document.body.offsetHeight - 40;
    log.appendChild(document.createTextNode(e.data + '\n'));
    if (end) window.scrollTo(0, document.body.scrollHeight);
  };
  es.addEventListener('end', function (e) {
    var s = document.getElementById('state');
    var d = JSON.parse(e.data);
    s.textContent = d.state + ' \u2014 ' + d.description;
    s.className = 'state ' + d.state;
    es.close();
    // The final status event is on the page as served now: take its table.
    fetch(location.href)
      .then(function (r) { return r.text(); })
      .then(function (t) {
        var n = new DOMParser().parseFromString(t, 'text/html').getElementById('events');
        if (n) document.getElementById('events').replaceWith(n);
      });
  });
}

function start() {
  var reload = document.querySelector('[data-reload-ms]');
  if (reload) {
    setTimeout(function () { location.reload(); }, Number(reload.dataset.reloadMs));
  }
  var log = document.getElementById('log');
  if (log && log.dataset.events) follow(log, log.dataset.events);
}

if (document.readyState === 'loading') {
  document.addEventListener('DOMContentLoaded', start);
} else {
  start();
}
