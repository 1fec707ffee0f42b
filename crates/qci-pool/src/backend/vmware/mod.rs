//! The `vmware` backend: machine control through the vSphere API (power,
//! snapshots, and the lease marker as the VM's `extraConfig` key
//! `qci.lease`, written as a compare-and-swap on `config.changeVersion` so
//! that several hosts may share one vCenter), and Guest Operations as the
//! guest channel
//! (`StartProgramInGuest`, `ListProcessesInGuest` for the exit code,
//! `InitiateFileTransferToGuest` / `FromGuest`).
//!
//! The session is opened on first use, so opening a backend costs nothing.

pub mod soap;

use crate::artifacts::MAX_SCREENSHOT_BYTES;
use crate::config::Credentials;
use crate::control::{
    ControlError, MachineControl, Marker, MarkerRead, PowerState, Snapshot, Swap,
};
use crate::guest::{GuestChannel, GuestError, GuestPid, sh_quote};
use soap::{Client, MoRef, Node, SoapError, esc};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `extraConfig` key holding the lease marker.
pub const MARKER_KEY: &str = "qci.lease";

/// What the session knows once it has logged in.
#[derive(Debug, Clone)]
struct Session {
    property_collector: MoRef,
    guest_operations: Option<MoRef>,
    vm: MoRef,
}

/// A vCenter or ESXi host and one VM on it.
pub struct Connection {
    client: Client,
    vm_name: String,
    credentials: Credentials,
    task_timeout: Duration,
    session: Mutex<Option<Session>>,
}

fn from_soap(e: SoapError) -> ControlError {
    match e {
        e if e.is_transport() => ControlError::Unreachable(format!("vSphere: {e}")),
        fault => ControlError::Refused(format!("vSphere: {fault}")),
    }
}

impl Connection {
    pub fn new(
        url: &str,
        vm: &str,
        credentials: Credentials,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<Self, ControlError> {
        let ca = ca_file
            .map(|p| {
                std::fs::read(p)
                    .map_err(|e| ControlError::Refused(format!("ca_file {}: {e}", p.display())))
            })
            .transpose()?;
        Ok(Self {
            client: Client::new(url, ca.as_deref(), timeout)?,
            vm_name: vm.to_owned(),
            credentials,
            task_timeout: timeout * 30,
            session: Mutex::new(None),
        })
    }

    fn session(&self) -> Result<Session, ControlError> {
        let mut guard = self
            .session
            .lock()
            .map_err(|_| ControlError::Refused("poisoned session".into()))?;
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let si = MoRef::new("ServiceInstance", "ServiceInstance");
        let content = self
            .client
            .call("RetrieveServiceContent", &si, "")
            .map_err(from_soap)?;
        let content = content
            .child("returnval")
            .ok_or_else(|| ControlError::Refused("vSphere: no service content".into()))?;
        let moref = |name: &str| content.child(name).and_then(MoRef::from_node);
        let need = |name: &str| {
            moref(name).ok_or_else(|| ControlError::Refused(format!("vSphere: no {name}")))
        };
        let sessions = need("sessionManager")?;
        self.client
            .call(
                "Login",
                &sessions,
                &format!(
                    "<userName>{}</userName><password>{}</password>",
                    esc(&self.credentials.user),
                    esc(&self.credentials.password)
                ),
            )
            .map_err(from_soap)?;
        let property_collector = need("propertyCollector")?;
        let vm = self.find_vm(
            &need("searchIndex")?,
            &need("viewManager")?,
            &need("rootFolder")?,
            &property_collector,
        )?;
        let session = Session {
            property_collector,
            guest_operations: moref("guestOperationsManager"),
            vm,
        };
        *guard = Some(session.clone());
        Ok(session)
    }

    /// The VM by inventory path (`DC0/vm/NAME`) or, without a `/`, by name.
    fn find_vm(
        &self,
        search: &MoRef,
        views: &MoRef,
        root: &MoRef,
        pc: &MoRef,
    ) -> Result<MoRef, ControlError> {
        let missing = || ControlError::Refused(format!("vSphere: no VM {:?}", self.vm_name));
        if self.vm_name.contains('/') {
            let found = self
                .client
                .call(
                    "FindByInventoryPath",
                    search,
                    &format!("<inventoryPath>{}</inventoryPath>", esc(&self.vm_name)),
                )
                .map_err(from_soap)?;
            return found
                .child("returnval")
                .and_then(MoRef::from_node)
                .ok_or_else(missing);
        }
        let view = self
            .client
            .call(
                "CreateContainerView",
                views,
                &format!(
                    "{}<type>VirtualMachine</type><recursive>true</recursive>",
                    root.xml("container")
                ),
            )
            .map_err(from_soap)?;
        let view = view
            .child("returnval")
            .and_then(MoRef::from_node)
            .ok_or_else(missing)?;
        let spec = format!(
            "<specSet><propSet><type>VirtualMachine</type><pathSet>name</pathSet></propSet>\
             <objectSet>{}<skip>true</skip><selectSet xsi:type=\"TraversalSpec\">\
             <name>view</name><type>ContainerView</type><path>view</path><skip>false</skip>\
             </selectSet></objectSet></specSet>",
            view.xml("obj")
        );
        let found = self.client.call("RetrieveProperties", pc, &spec);
        let _ = self.client.call("DestroyView", &view, "");
        let found = found.map_err(from_soap)?;
        found
            .children_named("returnval")
            .find(|o| {
                o.children_named("propSet")
                    .any(|p| p.text_of("val").map(str::trim) == Some(self.vm_name.as_str()))
            })
            .and_then(|o| o.child("obj"))
            .and_then(MoRef::from_node)
            .ok_or_else(missing)
    }

    /// One property of one object, as its `val` element.
    fn property(&self, obj: &MoRef, path: &str) -> Result<Option<Node>, ControlError> {
        Ok(self
            .properties(obj, &[path])?
            .into_iter()
            .find(|(name, _)| name == path)
            .map(|(_, val)| val))
    }

    /// Several properties of one object in one `RetrieveProperties`, so
    /// that they are read together, as one state of the object: each
    /// found one by name, with its `val` element.
    fn properties(&self, obj: &MoRef, paths: &[&str]) -> Result<Vec<(String, Node)>, ControlError> {
        let s = self.session()?;
        let path_set: String = paths
            .iter()
            .map(|p| format!("<pathSet>{}</pathSet>", esc(p)))
            .collect();
        let spec = format!(
            "<specSet><propSet><type>{}</type>{path_set}</propSet><objectSet>{}</objectSet></specSet>",
            esc(&obj.kind),
            obj.xml("obj")
        );
        let answer = self
            .client
            .call("RetrieveProperties", &s.property_collector, &spec)
            .map_err(from_soap)?;
        Ok(answer
            .child("returnval")
            .map(|o| {
                o.children_named("propSet")
                    .filter_map(|p| {
                        Some((
                            p.text_of("name")?.trim().to_owned(),
                            p.child("val")?.clone(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Calls a `*_Task` method and waits for its task to end.
    fn task(&self, method: &str, this: &MoRef, args: &str) -> Result<(), ControlError> {
        self.task_result(method, this, args).map(drop)
    }

    /// [`Self::task`], giving the task's `info` (its `result` is the answer).
    fn task_result(&self, method: &str, this: &MoRef, args: &str) -> Result<Node, ControlError> {
        self.task_outcome(method, this, args)?
            .map_err(|f| ControlError::Refused(f.to_string()))
    }

    /// [`Self::task_result`], keeping apart what vSphere refused (a fault of
    /// the call, or the task ending in `error`), with the fault's type, from
    /// a vSphere that did not answer.
    fn task_outcome(
        &self,
        method: &str,
        this: &MoRef,
        args: &str,
    ) -> Result<Result<Node, Refusal>, ControlError> {
        let answer = match self.client.call(method, this, args) {
            Ok(a) => a,
            Err(SoapError::Fault { kind, message }) => {
                return Ok(Err(Refusal {
                    mentions_change_version: message.contains("changeVersion"),
                    text: format!("vSphere: {kind}: {message}"),
                    kind,
                }));
            }
            Err(e) => return Err(from_soap(e)),
        };
        let task = answer
            .child("returnval")
            .and_then(MoRef::from_node)
            .ok_or_else(|| ControlError::Refused(format!("vSphere: {method} gave no task")))?;
        let deadline = Instant::now() + self.task_timeout;
        loop {
            let info = self.property(&task, "info")?.unwrap_or_default();
            match info.text_of("state").map(str::trim) {
                Some("success") => return Ok(Ok(info)),
                Some("error") => {
                    let error = info.child("error").cloned().unwrap_or_default();
                    let why = error
                        .text_of("localizedMessage")
                        .map(str::trim)
                        .unwrap_or("no message");
                    // `<fault xsi:type="ConcurrentAccess">`, maybe prefixed.
                    let kind = error
                        .child("fault")
                        .and_then(|f| f.attr("type"))
                        .map(|t| t.rsplit(':').next().unwrap_or(t).to_owned())
                        .unwrap_or_default();
                    return Ok(Err(Refusal {
                        mentions_change_version: mentions(&error, "changeVersion"),
                        text: format!("vSphere: {method}: {why}"),
                        kind,
                    }));
                }
                _ if Instant::now() >= deadline => {
                    return Err(ControlError::Unreachable(format!(
                        "vSphere: {method} did not finish within {}s",
                        self.task_timeout.as_secs()
                    )));
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The name of the datacenter that holds `obj`, up its `parent`s.
    fn datacenter_of(&self, obj: &MoRef) -> Result<String, ControlError> {
        let mut at = obj.clone();
        // Inventory trees are a few folders deep.
        for _ in 0..32 {
            // A property's value carries two `type`s: its XML schema type
            // (`ManagedObjectReference`) and the object's.
            let parent = self
                .property(&at, "parent")?
                .and_then(|val| {
                    let kind = val
                        .attrs
                        .iter()
                        .filter(|(k, v)| k == "type" && v != "ManagedObjectReference")
                        .map(|(_, v)| v.as_str())
                        .next_back()?;
                    Some(MoRef::new(kind, val.text.trim()))
                })
                .ok_or_else(|| {
                    ControlError::Refused("vSphere: the VM is in no datacenter".into())
                })?;
            if parent.kind == "Datacenter" {
                let name = self.property(&parent, "name")?;
                return name
                    .map(|n| n.text.trim().to_owned())
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| {
                        ControlError::Refused("vSphere: a datacenter with no name".into())
                    });
            }
            at = parent;
        }
        Err(ControlError::Refused(
            "vSphere: no datacenter above the VM".into(),
        ))
    }

    fn snapshot_tree(&self) -> Result<Vec<(Snapshot, MoRef)>, ControlError> {
        let vm = self.session()?.vm;
        let mut out = Vec::new();
        if let Some(info) = self.property(&vm, "snapshot")? {
            fn walk(n: &Node, out: &mut Vec<(Snapshot, MoRef)>) {
                for tree in n
                    .children
                    .iter()
                    .filter(|c| c.name == "rootSnapshotList" || c.name == "childSnapshotList")
                {
                    if let (Some(name), Some(moref)) = (
                        tree.text_of("name"),
                        tree.child("snapshot").and_then(MoRef::from_node),
                    ) {
                        let created = tree.text_of("createTime").and_then(unix_time).unwrap_or(0);
                        out.push((
                            Snapshot {
                                name: name.to_owned(),
                                created,
                            },
                            moref,
                        ));
                    }
                    walk(tree, out);
                }
            }
            walk(&info, &mut out);
        }
        Ok(out)
    }

    fn snapshot_ref(&self, name: &str) -> Result<MoRef, ControlError> {
        self.snapshot_tree()?
            .into_iter()
            .find(|(s, _)| s.name == name)
            .map(|(_, m)| m)
            .ok_or_else(|| ControlError::NoSuchSnapshot(name.into()))
    }
}

/// vSphere said no: to a call (a SOAP fault) or in its task's `info.error`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{text}")]
struct Refusal {
    /// The fault's type, e.g. `ConcurrentAccess`; empty when not given.
    kind: String,
    /// Whether the fault or its message names `changeVersion`.
    mentions_change_version: bool,
    text: String,
}

impl Refusal {
    /// A stale `changeVersion`: vSphere's `ReconfigVM_Task` ends in
    /// `ConcurrentAccess` ("Cannot complete operation due to concurrent
    /// modification by another operation") when the spec's
    /// `changeVersion` is not the VM's current one.
    fn is_stale_version(&self) -> bool {
        self.kind == "ConcurrentAccess" || self.mentions_change_version
    }
}

/// Whether `needle` is in any text or attribute under `node`.
fn mentions(node: &Node, needle: &str) -> bool {
    node.text.contains(needle)
        || node.attrs.iter().any(|(_, v)| v.contains(needle))
        || node.children.iter().any(|c| mentions(c, needle))
}

/// The marker's value in a VM's `config.extraConfig`. Some servers (the
/// govmomi simulator) append rather than replace: the last entry counts.
fn marker_in(extra_config: Option<&Node>) -> Option<Marker> {
    let value = extra_config.and_then(|c| {
        c.children
            .iter()
            .rfind(|o| o.text_of("key") == Some(MARKER_KEY))
            .and_then(|o| o.text_of("value"))
    })?;
    Marker::decode(value)
}

/// The `VirtualMachineConfigSpec` that sets the marker (clears it with an
/// empty value) only if the VM's `config.changeVersion` is still
/// `change_version`. `changeVersion` comes first: the spec is an XML
/// schema sequence, and vSphere checks its order.
fn marker_spec(change_version: &str, marker: Option<&Marker>) -> String {
    let value = marker.map(Marker::encode).unwrap_or_default();
    format!(
        "<spec><changeVersion>{}</changeVersion><extraConfig><key>{MARKER_KEY}</key>\
         <value xsi:type=\"xsd:string\">{}</value></extraConfig></spec>",
        esc(change_version),
        esc(&value)
    )
}

/// Seconds since the epoch of an xsd:dateTime such as
/// `2026-11-30T06:07:19.054321Z` (UTC, as vSphere writes them).
/// `[datastore1] vm1/vm1-1.png` as its datastore and its path there.
pub fn datastore_path(file: &str) -> Option<(&str, &str)> {
    let (datastore, path) = file.strip_prefix('[')?.split_once(']')?;
    Some((datastore, path.trim_start()))
}

/// The datastore's HTTP file access: `/folder/PATH?dcPath=DC&dsName=DS` on
/// the server of `base` (its `/sdk` URL), without the user in the URL.
pub fn folder_url(
    base: &str,
    datacenter: &str,
    datastore: &str,
    path: &str,
) -> Result<reqwest::Url, ControlError> {
    let mut url = reqwest::Url::parse(base)
        .map_err(|e| ControlError::Refused(format!("vSphere URL {base:?}: {e}")))?;
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_path(&format!("/folder/{path}"));
    url.query_pairs_mut()
        .clear()
        .append_pair("dcPath", datacenter)
        .append_pair("dsName", datastore);
    Ok(url)
}

fn unix_time(s: &str) -> Option<u64> {
    let s = s.trim();
    let num = |a: usize, b: usize| s.get(a..b)?.parse::<i64>().ok();
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hh, mm, ss) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// Machine control over a [`Connection`].
pub struct Vmware(pub Arc<Connection>);

impl Vmware {
    fn vm(&self) -> Result<MoRef, ControlError> {
        Ok(self.0.session()?.vm)
    }

    /// Power tasks: the VM already in the wanted state is fine.
    fn power_task(&self, method: &str) -> Result<(), ControlError> {
        match self.0.task(method, &self.vm()?, "") {
            Err(ControlError::Refused(e))
                if e.contains("InvalidPowerState") || e.contains("current state") =>
            {
                Ok(())
            }
            other => other,
        }
    }
}

impl MachineControl for Vmware {
    fn power_state(&self) -> Result<PowerState, ControlError> {
        let state = self.0.property(&self.vm()?, "runtime.powerState")?;
        Ok(match state.as_ref().map(|n| n.text.trim()) {
            Some("poweredOn") => PowerState::On,
            Some("poweredOff") => PowerState::Off,
            _ => PowerState::Other,
        })
    }

    fn start(&self) -> Result<(), ControlError> {
        if self.power_state()? == PowerState::On {
            return Ok(());
        }
        self.power_task("PowerOnVM_Task")
    }

    fn power_off(&self) -> Result<(), ControlError> {
        if self.power_state()? == PowerState::Off {
            return Ok(());
        }
        self.power_task("PowerOffVM_Task")
    }

    fn request_shutdown(&self) -> Result<(), ControlError> {
        self.0
            .client
            .call("ShutdownGuest", &self.vm()?, "")
            .map(drop)
            .map_err(from_soap)
    }

    fn revert(&self, snapshot: &str) -> Result<(), ControlError> {
        let snap = self.0.snapshot_ref(snapshot)?;
        self.0.task("RevertToSnapshot_Task", &snap, "")
    }

    fn snapshots(&self) -> Result<Vec<Snapshot>, ControlError> {
        Ok(self
            .0
            .snapshot_tree()?
            .into_iter()
            .map(|(s, _)| s)
            .collect())
    }

    fn create_snapshot(&self, name: &str) -> Result<(), ControlError> {
        let args = format!(
            "<name>{}</name><description>qci</description><memory>false</memory><quiesce>false</quiesce>",
            esc(name)
        );
        self.0.task("CreateSnapshot_Task", &self.vm()?, &args)
    }

    fn delete_snapshot(&self, name: &str) -> Result<(), ControlError> {
        let snap = self.0.snapshot_ref(name)?;
        self.0.task(
            "RemoveSnapshot_Task",
            &snap,
            "<removeChildren>false</removeChildren>",
        )
    }

    fn marker(&self) -> Result<Option<Marker>, ControlError> {
        let config = self.0.property(&self.vm()?, "config.extraConfig")?;
        Ok(marker_in(config.as_ref()))
    }

    /// `config.changeVersion` and `config.extraConfig` in one
    /// `RetrieveProperties`: one state of the VM, so the version is the one
    /// of the marker read with it.
    fn read_marker(&self) -> Result<MarkerRead, ControlError> {
        let props = self
            .0
            .properties(&self.vm()?, &["config.changeVersion", "config.extraConfig"])?;
        let get = |name: &str| props.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        // Real vSphere always gives one. A server that gives none (the
        // govmomi simulator 0.24 omits an empty one, and checks none) gets
        // an empty one back: equal to its own if it has none, stale (and
        // so refused) if it has one after all.
        let version = get("config.changeVersion")
            .map(|v| v.text.trim().to_owned())
            .unwrap_or_default();
        Ok(MarkerRead {
            marker: marker_in(get("config.extraConfig")),
            version: Some(version),
        })
    }

    /// `ReconfigVM_Task` with the `changeVersion` read: vSphere refuses it
    /// with `ConcurrentAccess` if the VM changed since, which is
    /// [`Swap::Lost`]. Every other refusal is an error.
    fn swap_marker(
        &self,
        read: &MarkerRead,
        marker: Option<&Marker>,
    ) -> Result<Swap, ControlError> {
        let version = read.version.as_deref().ok_or_else(|| {
            ControlError::Refused("vSphere: a marker write needs the changeVersion read".into())
        })?;
        let spec = marker_spec(version, marker);
        match self.0.task_outcome("ReconfigVM_Task", &self.vm()?, &spec)? {
            Ok(_) => Ok(Swap::Done),
            Err(r) if r.is_stale_version() => {
                tracing::debug!("lease marker: lost the race ({r})");
                Ok(Swap::Lost)
            }
            Err(r) => Err(ControlError::Refused(r.to_string())),
        }
    }

    /// `CreateScreenshot_Task`, then the PNG it left on the datastore,
    /// fetched over HTTP with the session cookie. (govmomi's simulator
    /// 0.24 has no CreateScreenshot_Task: there it is refused.)
    fn screenshot(&self) -> Result<Option<Vec<u8>>, ControlError> {
        let info = self
            .0
            .task_result("CreateScreenshot_Task", &self.vm()?, "")?;
        let file = info.text_of("result").map(str::trim).ok_or_else(|| {
            ControlError::Refused("vSphere: CreateScreenshot_Task gave no file".into())
        })?;
        self.datastore_file(file, MAX_SCREENSHOT_BYTES).map(Some)
    }
}

impl Vmware {
    /// A file on a datastore of the VM's datacenter (`[DS] PATH`, as a task
    /// names it), over HTTP with the session cookie; at most `max` bytes.
    pub fn datastore_file(&self, file: &str, max: u64) -> Result<Vec<u8>, ControlError> {
        let (datastore, path) = datastore_path(file).ok_or_else(|| {
            ControlError::Refused(format!("vSphere: {file:?} is not a datastore path"))
        })?;
        let datacenter = self.0.datacenter_of(&self.vm()?)?;
        let url = folder_url(self.0.client.base_url(), &datacenter, datastore, path)?;
        let mut request = self.0.client.http().get(url);
        if let Some(cookie) = self.0.client.cookie() {
            request = request.header("Cookie", cookie);
        }
        let refused = |e: String| ControlError::Refused(format!("vSphere: {file}: {e}"));
        let response = request.send().map_err(|e| refused(e.to_string()))?;
        if !response.status().is_success() {
            return Err(refused(response.status().to_string()));
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(response, max + 1), &mut bytes)
            .map_err(|e| refused(e.to_string()))?;
        if bytes.len() as u64 > max {
            return Err(refused(format!("larger than {max} bytes")));
        }
        Ok(bytes)
    }
}

/// Guest Operations in dom0, as the user `auth` names.
pub struct GuestOps {
    conn: Arc<Connection>,
    auth: Credentials,
    tmp_dir: String,
    managers: Mutex<Option<(MoRef, MoRef)>>,
}

fn guest_err(e: ControlError) -> GuestError {
    match e {
        ControlError::Unreachable(w) => GuestError::NoAnswer(w),
        other => GuestError::Failed(other.to_string()),
    }
}

/// Faults that mean the guest's tools are not (yet) running.
fn guest_soap(e: SoapError) -> GuestError {
    match &e {
        e if e.is_transport() => GuestError::NoAnswer(e.to_string()),
        SoapError::Fault { kind, .. }
            if kind.contains("GuestOperationsUnavailable")
                || kind.contains("ToolsUnavailable")
                || kind.contains("InvalidState")
                || kind.contains("GuestComponentsOutOfDate") =>
        {
            GuestError::NoAnswer(e.to_string())
        }
        _ => GuestError::Failed(e.to_string()),
    }
}

/// The XML of `auth` for a guest operation.
pub fn auth_xml(auth: &Credentials) -> String {
    format!(
        "<auth xsi:type=\"NamePasswordAuthentication\"><interactiveSession>false</interactiveSession>\
         <username>{}</username><password>{}</password></auth>",
        esc(&auth.user),
        esc(&auth.password)
    )
}

/// `StartProgramInGuest`'s arguments: the program, and the rest of argv
/// quoted into the one arguments string the API takes.
pub fn program_spec_xml(argv: &[String]) -> Option<String> {
    let (program, args) = argv.split_first()?;
    let args: Vec<String> = args.iter().map(|a| sh_quote(a)).collect();
    Some(format!(
        "<spec xsi:type=\"GuestProgramSpec\"><programPath>{}</programPath><arguments>{}</arguments></spec>",
        esc(program),
        esc(&args.join(" "))
    ))
}

/// The exit code in a `ListProcessesInGuest` answer, once `endTime` says
/// the process has ended.
pub fn exit_from_list(answer: &Node, pid: i64) -> Option<i32> {
    answer
        .children_named("returnval")
        .find(|p| p.text_of("pid").and_then(|t| t.trim().parse().ok()) == Some(pid))
        .filter(|p| p.child("endTime").is_some())
        .map(|p| {
            p.text_of("exitCode")
                .and_then(|c| c.trim().parse().ok())
                .unwrap_or(255)
        })
}

impl GuestOps {
    pub fn new(conn: Arc<Connection>, auth: Credentials, tmp_dir: &str) -> Self {
        Self {
            conn,
            auth,
            tmp_dir: tmp_dir.to_owned(),
            managers: Mutex::new(None),
        }
    }

    /// The process and file managers of Guest Operations.
    fn managers(&self) -> Result<(MoRef, MoRef, MoRef), GuestError> {
        let s = self.conn.session().map_err(guest_err)?;
        let mut cached = self
            .managers
            .lock()
            .map_err(|_| GuestError::Failed("poisoned".into()))?;
        if let Some((p, f)) = cached.as_ref() {
            return Ok((p.clone(), f.clone(), s.vm));
        }
        let gom = s
            .guest_operations
            .clone()
            .ok_or_else(|| GuestError::Failed("this vSphere has no Guest Operations".into()))?;
        let get = |path: &str| {
            self.conn
                .property(&gom, path)
                .map_err(guest_err)?
                .as_ref()
                .and_then(MoRef::from_node)
                .ok_or_else(|| GuestError::Failed(format!("no {path} in Guest Operations")))
        };
        let (p, f) = (get("processManager")?, get("fileManager")?);
        *cached = Some((p.clone(), f.clone()));
        Ok((p, f, s.vm))
    }

    /// A Guest Operations call about `path` in dom0.
    fn file_operation(&self, method: &str, path: &str, extra: &str) -> Result<Node, GuestError> {
        let (_, fm, vm) = self.managers()?;
        let args = format!(
            "{}{}<guestFilePath>{}</guestFilePath>{extra}",
            vm.xml("vm"),
            auth_xml(&self.auth),
            esc(path)
        );
        self.conn
            .client
            .call(method, &fm, &args)
            .map_err(guest_soap)
    }

    /// Sends a file transfer to the URL Guest Operations gave.
    fn transfer(
        &self,
        request: reqwest::blocking::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::blocking::Response, GuestError> {
        let resp = request
            .send()
            .map_err(|e| GuestError::NoAnswer(format!("{what}: {e}")))?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(GuestError::Failed(format!("{what}: {}", resp.status())))
        }
    }

    /// The URL of a transfer; one that names the host as `*` means the
    /// server's own.
    fn transfer_url(&self, url: Option<&str>) -> Result<String, GuestError> {
        let url = url
            .map(str::trim)
            .ok_or_else(|| GuestError::Failed("no transfer URL".into()))?;
        Ok(
            match (
                url.split_once("://"),
                self.conn.client.base_url().split_once("://"),
            ) {
                (Some((scheme, rest)), Some((_, base))) if rest.starts_with('*') => {
                    let host = base.split('/').next().unwrap_or_default();
                    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
                    format!("{scheme}://{host}{}", &rest[1..])
                }
                _ => url.to_owned(),
            },
        )
    }
}

impl GuestChannel for GuestOps {
    fn start(&self, argv: &[String]) -> Result<GuestPid, GuestError> {
        let (pm, _, vm) = self.managers()?;
        let spec =
            program_spec_xml(argv).ok_or_else(|| GuestError::Failed("empty command".into()))?;
        let args = format!("{}{}{spec}", vm.xml("vm"), auth_xml(&self.auth));
        let answer = self
            .conn
            .client
            .call("StartProgramInGuest", &pm, &args)
            .map_err(guest_soap)?;
        answer
            .text_of("returnval")
            .and_then(|t| t.trim().parse().ok())
            .map(GuestPid)
            .ok_or_else(|| GuestError::Failed("StartProgramInGuest gave no pid".into()))
    }

    fn exit_code(&self, pid: GuestPid) -> Result<Option<i32>, GuestError> {
        let (pm, _, vm) = self.managers()?;
        let args = format!(
            "{}{}<pids>{}</pids>",
            vm.xml("vm"),
            auth_xml(&self.auth),
            pid.0
        );
        let answer = self
            .conn
            .client
            .call("ListProcessesInGuest", &pm, &args)
            .map_err(guest_soap)?;
        Ok(exit_from_list(&answer, pid.0))
    }

    fn copy_in(&self, data: &[u8], path: &str) -> Result<(), GuestError> {
        let extra = format!(
            "<fileAttributes xsi:type=\"GuestFileAttributes\"></fileAttributes>\
             <fileSize>{}</fileSize><overwrite>true</overwrite>",
            data.len()
        );
        let answer = self.file_operation("InitiateFileTransferToGuest", path, &extra)?;
        let url = self.transfer_url(answer.text_of("returnval"))?;
        let upload = self.conn.client.http().put(&url).body(data.to_vec());
        self.transfer(upload, &format!("upload of {path}"))
            .map(drop)
    }

    fn copy_out(&self, path: &str) -> Result<Vec<u8>, GuestError> {
        let answer = self.file_operation("InitiateFileTransferFromGuest", path, "")?;
        let url = self.transfer_url(answer.child("returnval").and_then(|r| r.text_of("url")))?;
        let what = format!("download of {path}");
        let download = self.conn.client.http().get(&url);
        self.transfer(download, &what)?
            .bytes()
            .map(|b| b.to_vec())
            .map_err(|e| GuestError::NoAnswer(format!("{what}: {e}")))
    }

    /// Guest Operations read whole files only: dom0 cuts the part out first.
    fn read_at(&self, path: &str, offset: u64, max: usize) -> Result<Vec<u8>, GuestError> {
        let part = format!("{}/qci-host-read-{}", self.tmp_dir, std::process::id());
        let script = format!(
            "if [ -e {p} ]; then tail -c +{} {p} | head -c {max} > {t}; else : > {t}; fi",
            offset + 1,
            p = sh_quote(path),
            t = sh_quote(&part),
        );
        let code = self.run(
            &["/bin/sh".into(), "-c".into(), script],
            Duration::from_secs(60),
        )?;
        if code != 0 {
            return Err(GuestError::Failed(format!(
                "cannot read {path} in dom0 (exit {code})"
            )));
        }
        self.copy_out(&part)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_program_arguments_are_one_quoted_string() {
        let xml =
            program_spec_xml(&["/bin/sh".into(), "-c".into(), "echo 'a' && <b>".into()]).unwrap();
        let spec = soap::parse(&xml).unwrap();
        let spec = spec.child("spec").unwrap();
        assert_eq!(spec.attr("type"), Some("GuestProgramSpec"));
        assert_eq!(spec.text_of("programPath"), Some("/bin/sh"));
        assert_eq!(
            spec.text_of("arguments"),
            Some(r#"'-c' 'echo '\''a'\'' && <b>'"#)
        );
    }

    #[test]
    fn the_exit_code_appears_once_the_process_has_ended() {
        let running = soap::parse(
            "<r><returnval><pid>7</pid><name>sh</name><startTime>2026-11-30T06:00:00Z</startTime></returnval></r>",
        )
        .unwrap();
        assert_eq!(exit_from_list(running.child("r").unwrap(), 7), None);
        let ended = soap::parse(
            "<r><returnval><pid>7</pid><exitCode>3</exitCode><endTime>2026-11-30T06:00:01Z</endTime></returnval></r>",
        )
        .unwrap();
        assert_eq!(exit_from_list(ended.child("r").unwrap(), 7), Some(3));
        assert_eq!(exit_from_list(ended.child("r").unwrap(), 8), None);
    }

    #[test]
    fn auth_never_shows_the_password_unescaped() {
        let xml = auth_xml(&Credentials {
            user: "user".into(),
            password: "p<&>".into(),
        });
        assert!(xml.contains("p&lt;&amp;&gt;"), "{xml}");
    }

    #[test]
    fn a_screenshot_is_fetched_from_its_datastore_without_the_user_in_the_url() {
        let (datastore, path) = datastore_path("[datastore1] DC0_H0_VM0/DC0_H0_VM0-1.png").unwrap();
        assert_eq!(
            (datastore, path),
            ("datastore1", "DC0_H0_VM0/DC0_H0_VM0-1.png")
        );
        let url = folder_url(
            "https://user:pw@vc.example:8443/sdk",
            "DC 0",
            datastore,
            path,
        )
        .unwrap();
        assert_eq!(
            url.as_str(),
            "https://vc.example:8443/folder/DC0_H0_VM0/DC0_H0_VM0-1.png?dcPath=DC+0&dsName=datastore1"
        );
        assert_eq!(datastore_path("vm1/vm1.png"), None);
    }

    #[test]
    fn a_marker_write_carries_the_change_version_first() {
        let m = Marker {
            host: "rack-a".into(),
            job: "J<1>".into(),
            expires: 9,
        };
        let spec = soap::parse(&marker_spec("2026-12-04T01:02:03.4Z", Some(&m))).unwrap();
        let spec = spec.child("spec").unwrap();
        // A schema sequence: changeVersion before extraConfig.
        let names: Vec<&str> = spec.children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["changeVersion", "extraConfig"]);
        assert_eq!(
            spec.text_of("changeVersion"),
            Some("2026-12-04T01:02:03.4Z")
        );
        let extra = spec.child("extraConfig").unwrap();
        assert_eq!(extra.text_of("key"), Some(MARKER_KEY));
        assert_eq!(extra.text_of("value"), Some(m.encode().as_str()));
        // Clearing is an empty value, still against the version read.
        let clear = soap::parse(&marker_spec("7", None)).unwrap();
        let clear = clear.child("spec").unwrap();
        assert_eq!(clear.text_of("changeVersion"), Some("7"));
        assert_eq!(
            clear.child("extraConfig").unwrap().text_of("value"),
            Some("")
        );
    }

    #[test]
    fn the_last_marker_entry_counts() {
        let config = soap::parse(
            "<val><OptionValue><key>qci.lease</key><value>host=a job=1 expires=5</value></OptionValue>\
             <OptionValue><key>other</key><value>x</value></OptionValue>\
             <OptionValue><key>qci.lease</key><value>host=b job=2 expires=6</value></OptionValue></val>",
        )
        .unwrap();
        let m = marker_in(config.child("val")).unwrap();
        assert_eq!((m.host.as_str(), m.job.as_str()), ("b", "2"));
        assert_eq!(marker_in(None), None);
    }

    #[test]
    fn only_a_stale_change_version_is_a_lost_race() {
        let refusal = |kind: &str, mentions_change_version: bool| Refusal {
            kind: kind.into(),
            mentions_change_version,
            text: String::new(),
        };
        assert!(refusal("ConcurrentAccess", false).is_stale_version());
        assert!(refusal("InvalidArgument", true).is_stale_version());
        assert!(!refusal("InvalidPowerState", false).is_stale_version());
        assert!(!refusal("", false).is_stale_version());
        let error = soap::parse(
            "<error><fault xsi:type=\"InvalidArgument\"><invalidProperty>spec.changeVersion</invalidProperty></fault></error>",
        )
        .unwrap();
        assert!(mentions(&error, "changeVersion"));
    }

    #[test]
    fn times_are_read_as_utc() {
        assert_eq!(unix_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            unix_time("2026-11-30T06:07:19.054321Z"),
            Some(1_796_018_839)
        );
        assert_eq!(unix_time("garbage"), None);
    }
}
