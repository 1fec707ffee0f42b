//! The lease marker on a shared vCenter as a compare-and-swap.
//!
//! govmomi's simulator (0.24, Debian 12) neither reports nor checks
//! `config.changeVersion`: its `ReconfigVM_Task` never reads
//! `spec.changeVersion`, and it leaves the empty `config.changeVersion` out
//! of its answers. So these tests put a small HTTP proxy between our SOAP
//! client and the simulator that plays that part of vCenter: it numbers the
//! VM's configuration, adds `config.changeVersion` to the reads that ask
//! for it, records every `ReconfigVM_Task`, and answers one whose
//! `changeVersion` is stale as vCenter does, with a task that ends in
//! `error` with a `ConcurrentAccess` fault (`info.error`). It handles one
//! request at a time, so a check and the write behind it are one step, as
//! on vCenter. Without its check, the same race does double-hold.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

mod pool_support;
mod support;

use pool_support::Vcsim;
use qci_pool::backend::vmware::{Connection, Vmware};
use qci_pool::control::{
    Claim, MachineControl, Marker, MarkerRead, Swap, claim_marker, release_marker,
};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, SystemTime};

/// One `ReconfigVM_Task` as the proxy saw it.
#[derive(Debug, Clone)]
struct SeenWrite {
    /// The `changeVersion` of its spec.
    sent: Option<String>,
    /// The `changeVersion` the proxy last gave the same session.
    last_read: Option<String>,
    /// The VM's own at the time.
    current: String,
}

#[derive(Default)]
struct State {
    /// The VM's configuration's version, as the proxy keeps it.
    version: u64,
    last_read: HashMap<String, String>,
    writes: Vec<SeenWrite>,
    /// A marker a rival host writes just before the next marker write,
    /// making that write's `changeVersion` stale.
    rival: Option<String>,
    /// The tasks the proxy made up to refuse a stale write.
    stale_tasks: HashSet<String>,
    /// Refuse a stale write as a fault of the call itself rather than in
    /// its task (vCenter uses the task; the client takes either).
    stale_as_fault: bool,
    /// Forward stale writes too, as the simulator alone does.
    no_check: bool,
}

struct Proxy {
    url: String,
    state: Arc<Mutex<State>>,
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    let len = s[from..].find(end)?;
    Some(&s[from..from + len])
}

fn envelope(body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope \
         xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"
    )
}

impl Proxy {
    fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/sdk", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            version: 1,
            ..State::default()
        }));
        let (upstream, shared) = (upstream.to_owned(), state.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (upstream, state) = (upstream.clone(), shared.clone());
                std::thread::spawn(move || serve(conn, &upstream, &state));
            }
        });
        Self { url, state }
    }

    fn writes(&self) -> Vec<SeenWrite> {
        self.state.lock().unwrap().writes.clone()
    }
}

/// One keep-alive connection: requests in, answers out.
fn serve(conn: TcpStream, upstream: &str, state: &Mutex<State>) {
    let http = reqwest::blocking::Client::new();
    let _ = conn.set_nodelay(true);
    let mut out = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut length = 0;
        let mut cookie = None;
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap(),
                    "cookie" => cookie = Some(value.trim().to_owned()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let body = String::from_utf8(body).unwrap();
        let (status, set_cookie, answer) = {
            let mut state = state.lock().unwrap();
            handle(&http, upstream, &mut state, cookie.as_deref(), &body)
        };
        let set_cookie = set_cookie
            .map(|c| format!("Set-Cookie: {c}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/xml; charset=utf-8\r\n{set_cookie}Content-Length: {}\r\n\r\n",
            answer.len()
        );
        // One write: a head and a body apart wait on delayed ACKs.
        if out.write_all((head + &answer).as_bytes()).is_err() {
            return;
        }
    }
}

fn forward(
    http: &reqwest::blocking::Client,
    upstream: &str,
    cookie: Option<&str>,
    body: &str,
) -> (u16, Option<String>, String) {
    let mut request = http
        .post(upstream)
        .header("Content-Type", "text/xml; charset=utf-8")
        .body(body.to_owned());
    if let Some(c) = cookie {
        request = request.header("Cookie", c);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    let set_cookie = response
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, set_cookie, response.text().unwrap())
}

fn handle(
    http: &reqwest::blocking::Client,
    upstream: &str,
    state: &mut State,
    cookie: Option<&str>,
    body: &str,
) -> (u16, Option<String>, String) {
    let session = cookie.unwrap_or_default().to_owned();
    if body.contains("<ReconfigVM_Task") {
        if let Some(rival) = state.rival.take() {
            let value = between(body, "<value xsi:type=\"xsd:string\">", "</value>").unwrap();
            let theirs = body.replacen(value, &rival, 1);
            let (status, _, _) = forward(http, upstream, cookie, &theirs);
            assert_eq!(status, 200);
            state.version += 1;
        }
        let sent = between(body, "<changeVersion>", "</changeVersion>").map(str::to_owned);
        let current = state.version.to_string();
        state.writes.push(SeenWrite {
            sent: sent.clone(),
            last_read: state.last_read.get(&session).cloned(),
            current: current.clone(),
        });
        if sent.as_deref() != Some(current.as_str()) && !state.no_check {
            if state.stale_as_fault {
                let n = state.stale_tasks.len() + 1;
                state.stale_tasks.insert(format!("fault-{n}"));
                return (
                    500,
                    None,
                    envelope(
                        "<soapenv:Fault><faultcode>ServerFaultCode</faultcode>\
                         <faultstring>Cannot complete operation due to concurrent modification by another operation.</faultstring>\
                         <detail><ConcurrentAccessFault xmlns=\"urn:vim25\" xsi:type=\"ConcurrentAccess\"></ConcurrentAccessFault></detail>\
                         </soapenv:Fault>",
                    ),
                );
            }
            let task = format!("task-stale-{}", state.stale_tasks.len() + 1);
            state.stale_tasks.insert(task.clone());
            return (
                200,
                None,
                envelope(&format!(
                    "<ReconfigVM_TaskResponse xmlns=\"urn:vim25\"><returnval type=\"Task\">{task}</returnval></ReconfigVM_TaskResponse>"
                )),
            );
        }
        state.version += 1;
        return forward(http, upstream, cookie, body);
    }
    if let Some(task) = between(body, "<obj type=\"Task\">", "</obj>")
        && state.stale_tasks.contains(task)
    {
        // A TaskInfo as vCenter gives one for a ReconfigVM_Task refused
        // for its changeVersion.
        return (
            200,
            None,
            envelope(&format!(
                "<RetrievePropertiesResponse xmlns=\"urn:vim25\"><returnval><obj type=\"Task\">{task}</obj>\
                 <propSet><name>info</name><val xsi:type=\"TaskInfo\"><key>{task}</key>\
                 <task type=\"Task\">{task}</task><name>ReconfigVM_Task</name>\
                 <descriptionId>VirtualMachine.reconfigure</descriptionId><state>error</state>\
                 <cancelled>false</cancelled><cancelable>false</cancelable>\
                 <error><fault xsi:type=\"ConcurrentAccess\"></fault>\
                 <localizedMessage>Cannot complete operation due to concurrent modification by another operation.</localizedMessage></error>\
                 <queueTime>2026-12-04T00:00:00Z</queueTime></val></propSet></returnval></RetrievePropertiesResponse>"
            )),
        );
    }
    let (status, set_cookie, mut answer) = forward(http, upstream, cookie, body);
    if body.contains("<pathSet>config.changeVersion</pathSet>") {
        let version = state.version.to_string();
        let at = answer.find("</obj>").unwrap() + "</obj>".len();
        answer.insert_str(
            at,
            &format!(
                "<propSet><name>config.changeVersion</name><val xsi:type=\"xsd:string\">{version}</val></propSet>"
            ),
        );
        state.last_read.insert(session, version);
    }
    (status, set_cookie, answer)
}

fn vm(url: &str, vc: &Vcsim) -> Vmware {
    let (user, password) = vc.credentials.split_once(':').unwrap();
    let credentials = qci_pool::config::Credentials {
        user: user.into(),
        password: password.into(),
    };
    let conn = Connection::new(
        url,
        "DC0_H0_VM0",
        credentials,
        None,
        Duration::from_secs(20),
    );
    Vmware(Arc::new(conn.unwrap()))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn marker(host: &str, job: &str) -> Marker {
    Marker {
        host: host.into(),
        job: job.into(),
        expires: now() + 600,
    }
}

/// Why the proxy: the simulator takes any `changeVersion`. Should a newer
/// one check it, this fails, and the race can run against it directly.
#[test]
fn the_simulator_alone_neither_reports_nor_checks_change_version() {
    let Some(vc) = Vcsim::start() else { return };
    let direct = vm(&vc.url, &vc);
    let read = direct.read_marker().unwrap();
    // Left out of its answer, read as empty.
    assert_eq!(read.version.as_deref(), Some(""));
    let stale = MarkerRead {
        version: Some("not-its-version".into()),
        ..read
    };
    let m = marker("rack-a", "J1");
    assert_eq!(direct.swap_marker(&stale, Some(&m)).unwrap(), Swap::Done);
    assert_eq!(direct.marker().unwrap(), Some(m));
}

#[test]
fn every_marker_write_sends_the_change_version_read_just_before() {
    let Some(vc) = Vcsim::start() else { return };
    let proxy = Proxy::start(&vc.url);
    let (a, b) = (vm(&proxy.url, &vc), vm(&proxy.url, &vc));
    let (ma, mb) = (marker("rack-a", "J1"), marker("rack-b", "J2"));
    assert_eq!(
        claim_marker(&a, &ma, now()).unwrap(),
        Claim::Ours(ma.clone())
    );
    assert_eq!(
        claim_marker(&b, &mb, now()).unwrap(),
        Claim::Foreign(Some(ma.clone()))
    );
    release_marker(&a, "rack-a", "J1").unwrap();
    assert_eq!(a.marker().unwrap(), None);
    assert_eq!(
        claim_marker(&b, &mb, now()).unwrap(),
        Claim::Ours(mb.clone())
    );
    // Not ours: no write at all.
    release_marker(&a, "rack-a", "J1").unwrap();
    release_marker(&b, "rack-b", "J2").unwrap();
    let writes = proxy.writes();
    eprintln!("writes: {writes:?}");
    // a claims, a clears, b claims, b clears: four writes, each with the
    // version its own session read just before, which was the VM's.
    assert_eq!(writes.len(), 4, "{writes:?}");
    for (i, w) in writes.iter().enumerate() {
        assert!(w.sent.is_some(), "{w:?}");
        assert_eq!(w.sent, w.last_read, "{w:?}");
        assert_eq!(w.sent.as_deref(), Some(w.current.as_str()), "{w:?}");
        assert_eq!(w.current, (i + 1).to_string(), "{w:?}");
    }
}

#[test]
fn a_stale_change_version_is_a_lost_race_and_the_other_lease_stands() {
    let Some(vc) = Vcsim::start() else { return };
    let proxy = Proxy::start(&vc.url);
    let ours = vm(&proxy.url, &vc);
    let theirs = marker("rack-b", "J2");
    // Between our read and our write, another host takes the machine.
    proxy.state.lock().unwrap().rival = Some(theirs.encode());
    let mine = marker("rack-a", "J1");
    assert_eq!(
        claim_marker(&ours, &mine, now()).unwrap(),
        Claim::Foreign(Some(theirs.clone()))
    );
    let writes = proxy.writes();
    eprintln!("writes: {writes:?}");
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].sent.as_deref(), Some("1"));
    assert_eq!(writes[0].current, "2");
    assert_eq!(proxy.state.lock().unwrap().stale_tasks.len(), 1);
    // On the simulator itself, past the proxy: the other lease stands.
    let direct = vm(&vc.url, &vc);
    assert_eq!(direct.marker().unwrap(), Some(theirs.clone()));
    // Our release leaves it alone.
    release_marker(&ours, "rack-a", "J1").unwrap();
    assert_eq!(direct.marker().unwrap(), Some(theirs.clone()));
    // A write from a stale read is lost, as such, not an error.
    let read = ours.read_marker().unwrap();
    proxy.state.lock().unwrap().version += 1;
    assert_eq!(ours.swap_marker(&read, Some(&mine)).unwrap(), Swap::Lost);
    assert_eq!(direct.marker().unwrap(), Some(theirs));
}

#[test]
fn a_stale_change_version_refused_as_a_fault_of_the_call_is_lost_too() {
    let Some(vc) = Vcsim::start() else { return };
    let proxy = Proxy::start(&vc.url);
    let ours = vm(&proxy.url, &vc);
    let theirs = marker("rack-b", "J2");
    {
        let mut state = proxy.state.lock().unwrap();
        state.rival = Some(theirs.encode());
        state.stale_as_fault = true;
    }
    assert_eq!(
        claim_marker(&ours, &marker("rack-a", "J1"), now()).unwrap(),
        Claim::Foreign(Some(theirs.clone()))
    );
    assert_eq!(proxy.state.lock().unwrap().stale_tasks.len(), 1);
    assert_eq!(vm(&vc.url, &vc).marker().unwrap(), Some(theirs));
}

/// Two hosts, each with its own session, claim the free machine at the
/// same moment, `rounds` times; the winner frees it after both have
/// claimed. Gives how often both held it, each one's wins, and how many
/// stale writes the proxy refused.
fn race(vc: &Vcsim, proxy: &Proxy, rounds: usize) -> (usize, [usize; 2], usize) {
    let hosts = ["rack-a", "rack-b"];
    let barrier = Arc::new(Barrier::new(2));
    let results: Vec<Vec<bool>> = std::thread::scope(|s| {
        let threads: Vec<_> = hosts
            .iter()
            .map(|host| {
                let (barrier, control) = (barrier.clone(), vm(&proxy.url, vc));
                s.spawn(move || {
                    let mut won = Vec::new();
                    for round in 0..rounds {
                        let job = format!("J{round}");
                        barrier.wait();
                        let claim = claim_marker(&control, &marker(host, &job), now()).unwrap();
                        won.push(matches!(claim, Claim::Ours(_)));
                        // Both have claimed before the winner lets go.
                        barrier.wait();
                        release_marker(&control, host, &job).unwrap();
                    }
                    won
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let both = (0..rounds)
        .filter(|&r| results[0][r] && results[1][r])
        .count();
    let wins = [0, 1].map(|h| results[h].iter().filter(|&&x| x).count());
    let stale = proxy.state.lock().unwrap().stale_tasks.len();
    (both, wins, stale)
}

#[test]
fn two_hosts_racing_200_times_through_a_change_version_check_never_both_hold_it() {
    let Some(vc) = Vcsim::start() else { return };
    let proxy = Proxy::start(&vc.url);
    let rounds = 200;
    let (both, wins, stale) = race(&vc, &proxy, rounds);
    eprintln!("{rounds} rounds: wins {wins:?}, both held {both}, stale writes refused {stale}");
    assert_eq!(both, 0);
    // Someone got the free machine each round, and the race did happen.
    assert_eq!(wins[0] + wins[1], rounds, "{wins:?}");
    assert!(stale > 0, "no write was ever stale: the hosts never raced");
    for w in proxy.writes() {
        assert_eq!(w.sent, w.last_read, "{w:?}");
    }
}

/// The same race against a vCenter that checks no `changeVersion` (as
/// the simulator alone): both hosts read their own marker back in many
/// rounds. So the race above is one that the check wins, not one that
/// never happens.
#[test]
fn without_a_change_version_check_the_same_race_double_holds() {
    let Some(vc) = Vcsim::start() else { return };
    let proxy = Proxy::start(&vc.url);
    proxy.state.lock().unwrap().no_check = true;
    let rounds = 200;
    let (both, wins, _) = race(&vc, &proxy, rounds);
    eprintln!("{rounds} rounds with no check: wins {wins:?}, both held {both}");
    assert!(both > 0, "{wins:?}");
}
