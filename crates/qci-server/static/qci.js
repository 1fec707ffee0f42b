// qci's pages: the monitor reloads itself, and a job's page follows its log
// live. Served as /static/qci.js so that the pages carry no inline script
// and their policy can say script-src 'self'. What it needs from a page
// comes in data- attributes (data-reload-ms, data-events), never in code;
// text from outside reaches the page only through textContent (and the
// log's colours through className).
'use strict';

// One line of the log as the server cut it into runs ({class, text}: its
// colours as sgr- classes, every other escape already gone), built with
// textContent and className only.
function appendLine(log, runs) {
  for (var i = 0; i < runs.length; i++) {
    var run = runs[i];
    if (run.class) {
      var span = document.createElement('span');
      span.className = String(run.class);
      span.textContent = String(run.text);
      log.appendChild(span);
    } else {
      log.appendChild(document.createTextNode(String(run.text)));
    }
  }
  log.appendChild(document.createTextNode('\n'));
}

// What the page as served now has that the live one lacks once the job has
// ended: its final status events, where and when it ran, and its log in
// sections.
var REFRESHED = ['events', 'machine', 'snapshot', 'started', 'ended', 'duration', 'log'];

function follow(log, url) {
  var es = new EventSource(url);
  es.onmessage = function (e) {
    var end = window.innerHeight + window.scrollY >= document.body.offsetHeight - 40;
    var lines = JSON.parse(e.data);
    for (var i = 0; i < lines.length; i++) appendLine(log, lines[i]);
    if (end) window.scrollTo(0, document.body.scrollHeight);
  };
  es.addEventListener('end', function (e) {
    var s = document.getElementById('state');
    var d = JSON.parse(e.data);
    s.textContent = d.state + ' \u2014 ' + d.description;
    s.className = 'state ' + d.state;
    es.close();
    fetch(location.href)
      .then(function (r) { return r.text(); })
      .then(function (t) {
        var served = new DOMParser().parseFromString(t, 'text/html');
        REFRESHED.forEach(function (id) {
          var n = served.getElementById(id);
          var old = document.getElementById(id);
          // A log still live as served (not yet published) stays as it is.
          if (n && old && !(id === 'log' && n.dataset.events)) old.replaceWith(n);
        });
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
