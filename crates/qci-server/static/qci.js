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
function appendLine(pre, runs) {
  for (var i = 0; i < runs.length; i++) {
    var run = runs[i];
    if (run.class) {
      var span = document.createElement('span');
      span.className = String(run.class);
      span.textContent = String(run.text);
      pre.appendChild(span);
    } else {
      pre.appendChild(document.createTextNode(String(run.text)));
    }
  }
  pre.appendChild(document.createTextNode('\n'));
}

// A section of the live log, as the server renders a finished one:
// <details class="section"><summary><span class="name">…</span> <span
// class="state …">…</span></summary><pre>…</pre></details>.
function section(log, title) {
  var details = document.createElement('details');
  details.className = 'section';
  details.open = true;
  var summary = document.createElement('summary');
  var name = document.createElement('span');
  name.className = 'name';
  name.textContent = String(title);
  var result = document.createElement('span');
  summary.appendChild(name);
  summary.appendChild(document.createTextNode(' '));
  summary.appendChild(result);
  details.appendChild(summary);
  var pre = document.createElement('pre');
  details.appendChild(pre);
  log.appendChild(details);
  return { details: details, result: result, pre: pre };
}

// The live log in sections: the server marks the lines that start and end
// a step ({start: NAME} or {end: {step, result, state, took}}); the script
// only keeps which step is open. A step that passed closes; the others stay
// open.
function LiveLog(log) {
  this.log = log;
  this.current = null;
  this.step = null;
  this.afterStep = false;
}

LiveLog.prototype.add = function (line) {
  if (line.start) {
    if (this.current && !this.step) this.current.details.open = false;
    this.current = section(this.log, line.start);
    this.current.result.className = 'state running';
    this.current.result.textContent = 'running';
    this.step = String(line.start);
    this.afterStep = false;
  } else if (!this.current || (this.afterStep && !line.end)) {
    this.current = section(this.log, this.current ? 'Finish' : 'Setup');
    this.afterStep = false;
  }
  appendLine(this.current.pre, line.runs);
  var end = line.end;
  if (end && this.step !== null && String(end.step) === this.step) {
    this.current.result.className = 'state ' + String(end.state);
    this.current.result.textContent = String(end.result) + (end.took ? ' in ' + String(end.took) : '');
    if (end.state === 'success') this.current.details.open = false;
    this.step = null;
    this.afterStep = true;
  }
};

// What the page as served now has that the live one lacks once the job has
// ended: its final status events, where and when it ran, and its log in
// sections.
var REFRESHED = ['events', 'machine', 'snapshot', 'started', 'ended', 'duration', 'results', 'log'];

function follow(log, url) {
  var es = new EventSource(url);
  var live = new LiveLog(log);
  es.onmessage = function (e) {
    var end = window.innerHeight + window.scrollY >= document.body.offsetHeight - 40;
    var lines = JSON.parse(e.data);
    for (var i = 0; i < lines.length; i++) live.add(lines[i]);
    if (end) window.scrollTo(0, document.body.scrollHeight);
  };
  es.addEventListener('end', function (e) {
    var s = document.getElementById('state');
    var d = JSON.parse(e.data);
    s.textContent = d.state + ' \u2014 ' + d.description;
    s.className = 'state ' + d.state;
    es.close();
    refresh(60);
  });
}

// Once a job ends, the page as served replaces the live parts: the log in
// sections, the machine and times, the tests and files. The host stores
// them when it publishes the log, a moment after the end: until the served
// log is no longer live, ask again (every 500 ms, `tries` times).
function refresh(tries) {
  fetch(location.href)
    .then(function (r) { return r.text(); })
    .then(function (t) {
      var served = new DOMParser().parseFromString(t, 'text/html');
      var log = served.getElementById('log');
      if (log && log.dataset.events) {
        if (tries > 0) setTimeout(function () { refresh(tries - 1); }, 500);
        return;
      }
      REFRESHED.forEach(function (id) {
        var n = served.getElementById(id);
        var old = document.getElementById(id);
        if (n && old) old.replaceWith(n);
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
