//! The libvirt backend's guest channel: the QEMU guest agent in dom0.
//!
//! The agent speaks QMP-style JSON: `{"execute": CMD, "arguments": {..}}`
//! answered by `{"return": ..}` or `{"error": {"class", "desc"}}`. Commands
//! used: `guest-exec` / `guest-exec-status` (start a process, read its exit
//! code), `guest-file-open` / `-seek` / `-read` / `-write` / `-close` (file
//! data travels base64-encoded). In production the messages go through
//! libvirt (`virsh qemu-agent-command`), which owns the agent's socket.

use crate::command::run_bounded;
use crate::guest::{GuestChannel, GuestError, GuestPid};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

/// Carries one agent command and brings back its `return` value.
pub trait Transport: Send + Sync {
    fn execute(&self, command: &str, arguments: Value) -> Result<Value, GuestError>;
}

/// Bytes per `guest-file-read` / `-write`: well under the agent's limits
/// once base64 grows them by a third.
const CHUNK: usize = 48 * 1024;

/// The agent's message, as sent.
pub fn request(command: &str, arguments: &Value) -> String {
    if arguments.is_null() {
        json!({ "execute": command }).to_string()
    } else {
        json!({ "execute": command, "arguments": arguments }).to_string()
    }
}

/// The `return` of an agent answer, or its error.
pub fn parse_reply(command: &str, reply: &str) -> Result<Value, GuestError> {
    let v: Value = serde_json::from_str(reply.trim())
        .map_err(|e| GuestError::Failed(format!("{command}: unreadable agent answer: {e}")))?;
    if let Some(ret) = v.get("return") {
        return Ok(ret.clone());
    }
    let desc = v
        .pointer("/error/desc")
        .and_then(Value::as_str)
        .unwrap_or("no return and no error");
    Err(GuestError::Failed(format!("{command}: {desc}")))
}

/// `virsh qemu-agent-command`, bounded by the call timeout.
pub struct Virsh {
    uri: String,
    domain: String,
    timeout: Duration,
}

impl Virsh {
    pub fn new(uri: String, domain: String, timeout: Duration) -> Self {
        Self {
            uri,
            domain,
            timeout,
        }
    }
}

impl Transport for Virsh {
    fn execute(&self, command: &str, arguments: Value) -> Result<Value, GuestError> {
        let secs = self.timeout.as_secs().max(1).to_string();
        let mut cmd = Command::new("virsh");
        cmd.args(["-q", "-c", &self.uri, "qemu-agent-command", &self.domain])
            .arg(request(command, &arguments))
            .args(["--timeout", &secs]);
        let done =
            run_bounded(cmd, self.timeout + Duration::from_secs(5)).map_err(GuestError::Client)?;
        if done.success {
            return parse_reply(command, &done.stdout);
        }
        let err = done.stderr.trim().replace('\n', "; ");
        // An agent that is not (yet) there, or a libvirt that cannot reach
        // it, is a machine that does not answer; anything else is dom0's no.
        let silent = [
            "not responding",
            "not connected",
            "not configured",
            "not supported",
            "not running",
            "domain is not running",
        ];
        if super::libvirt::is_connection_error(&err) || silent.iter().any(|w| err.contains(w)) {
            Err(GuestError::NoAnswer(format!("{command}: {err}")))
        } else {
            Err(GuestError::Failed(format!("{command}: {err}")))
        }
    }
}

/// The guest channel over any transport.
pub struct Agent<T> {
    transport: T,
}

impl<T: Transport> Agent<T> {
    pub fn new(transport: T) -> Self {
        Self { transport }
    }

    fn open(&self, path: &str, mode: &str) -> Result<Option<i64>, GuestError> {
        match self
            .transport
            .execute("guest-file-open", json!({ "path": path, "mode": mode }))
        {
            Ok(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| GuestError::Failed("guest-file-open: no handle".into())),
            Err(GuestError::Failed(e)) if e.contains("No such file") => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn close(&self, handle: i64) {
        let _ = self
            .transport
            .execute("guest-file-close", json!({ "handle": handle }));
    }

    /// Reads from `handle` until `max` bytes or the end.
    fn read(&self, handle: i64, max: usize) -> Result<Vec<u8>, GuestError> {
        let mut data = Vec::new();
        while data.len() < max {
            let count = CHUNK.min(max - data.len());
            let v = self.transport.execute(
                "guest-file-read",
                json!({ "handle": handle, "count": count }),
            )?;
            let chunk = v.get("buf-b64").and_then(Value::as_str).unwrap_or_default();
            let bytes = B64
                .decode(chunk)
                .map_err(|e| GuestError::Failed(format!("guest-file-read: bad base64: {e}")))?;
            let eof = v
                .get("eof")
                .and_then(Value::as_bool)
                .unwrap_or(bytes.is_empty());
            data.extend_from_slice(&bytes);
            if eof || bytes.is_empty() {
                break;
            }
        }
        Ok(data)
    }
}

impl<T: Transport> GuestChannel for Agent<T> {
    fn start(&self, argv: &[String]) -> Result<GuestPid, GuestError> {
        let (path, args) = argv
            .split_first()
            .ok_or_else(|| GuestError::Failed("empty command".into()))?;
        let v = self.transport.execute(
            "guest-exec",
            json!({ "path": path, "arg": args, "capture-output": false }),
        )?;
        v.get("pid")
            .and_then(Value::as_i64)
            .map(GuestPid)
            .ok_or_else(|| GuestError::Failed("guest-exec: no pid".into()))
    }

    fn exit_code(&self, pid: GuestPid) -> Result<Option<i32>, GuestError> {
        let v = self
            .transport
            .execute("guest-exec-status", json!({ "pid": pid.0 }))?;
        if !v.get("exited").and_then(Value::as_bool).unwrap_or(false) {
            return Ok(None);
        }
        let code = match (
            v.get("exitcode").and_then(Value::as_i64),
            v.get("signal").and_then(Value::as_i64),
        ) {
            (Some(c), _) => c as i32,
            (None, Some(s)) => 128 + s as i32,
            (None, None) => 255,
        };
        Ok(Some(code))
    }

    fn copy_in(&self, data: &[u8], path: &str) -> Result<(), GuestError> {
        let handle = self
            .open(path, "w")?
            .ok_or_else(|| GuestError::Failed(format!("cannot create {path}")))?;
        let written = data.chunks(CHUNK).try_for_each(|chunk| {
            self.transport
                .execute(
                    "guest-file-write",
                    json!({ "handle": handle, "buf-b64": B64.encode(chunk) }),
                )
                .map(drop)
        });
        self.close(handle);
        written
    }

    fn copy_out(&self, path: &str) -> Result<Vec<u8>, GuestError> {
        let handle = self
            .open(path, "r")?
            .ok_or_else(|| GuestError::Failed(format!("{path}: No such file")))?;
        let data = self.read(handle, usize::MAX);
        self.close(handle);
        data
    }

    fn read_at(&self, path: &str, offset: u64, max: usize) -> Result<Vec<u8>, GuestError> {
        let Some(handle) = self.open(path, "r")? else {
            return Ok(Vec::new());
        };
        let data = self
            .transport
            .execute(
                "guest-file-seek",
                json!({ "handle": handle, "offset": offset, "whence": "set" }),
            )
            .and_then(|_| self.read(handle, max));
        self.close(handle);
        data
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// An agent as the QEMU guest agent behaves, over an in-memory file
    /// system and process table: it checks the messages' names and fields
    /// as the agent's schema does, and answers in its shapes.
    #[derive(Default)]
    struct FakeAgent {
        files: Mutex<HashMap<String, Vec<u8>>>,
        handles: Mutex<HashMap<i64, (String, usize)>>,
        sent: Mutex<Vec<String>>,
    }

    impl Transport for FakeAgent {
        fn execute(&self, command: &str, a: Value) -> Result<Value, GuestError> {
            let wire = request(command, &a);
            self.sent.lock().unwrap().push(wire.clone());
            let msg: Value = serde_json::from_str(&wire).unwrap();
            let a = &msg["arguments"];
            let reply = match msg["execute"].as_str().unwrap() {
                "guest-exec" => {
                    assert_eq!(a["capture-output"], false);
                    let args: Vec<&str> = a["arg"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap())
                        .collect();
                    // `sh -c 'exit N'` is the only program this agent knows.
                    let code: i64 = args[1].trim_start_matches("exit ").parse().unwrap();
                    json!({"return": {"pid": 1000 + code}})
                }
                "guest-exec-status" => {
                    let pid = a["pid"].as_i64().unwrap();
                    json!({"return": {"exited": true, "exitcode": pid - 1000}})
                }
                "guest-file-open" => {
                    let path = a["path"].as_str().unwrap().to_owned();
                    let mut files = self.files.lock().unwrap();
                    match a["mode"].as_str().unwrap() {
                        "w" => {
                            files.insert(path.clone(), Vec::new());
                        }
                        "r" if !files.contains_key(&path) => {
                            return parse_reply(command, &json!({"error": {"class": "GenericError",
                                "desc": format!("failed to open file '{path}' (mode: 'r'): No such file or directory")}}).to_string());
                        }
                        _ => {}
                    }
                    let mut handles = self.handles.lock().unwrap();
                    let h = handles.len() as i64 + 1;
                    handles.insert(h, (path, 0));
                    json!({"return": h})
                }
                "guest-file-seek" => {
                    assert_eq!(a["whence"], "set");
                    let mut handles = self.handles.lock().unwrap();
                    let entry = handles.get_mut(&a["handle"].as_i64().unwrap()).unwrap();
                    entry.1 = a["offset"].as_u64().unwrap() as usize;
                    json!({"return": {"position": entry.1, "eof": false}})
                }
                "guest-file-read" => {
                    let mut handles = self.handles.lock().unwrap();
                    let entry = handles.get_mut(&a["handle"].as_i64().unwrap()).unwrap();
                    let files = self.files.lock().unwrap();
                    let data = &files[&entry.0];
                    let start = entry.1.min(data.len());
                    let end = (start + a["count"].as_u64().unwrap() as usize).min(data.len());
                    entry.1 = end;
                    json!({"return": {"count": end - start, "buf-b64": B64.encode(&data[start..end]), "eof": end == data.len()}})
                }
                "guest-file-write" => {
                    let handles = self.handles.lock().unwrap();
                    let path = &handles[&a["handle"].as_i64().unwrap()].0;
                    let bytes = B64.decode(a["buf-b64"].as_str().unwrap()).unwrap();
                    self.files
                        .lock()
                        .unwrap()
                        .get_mut(path)
                        .unwrap()
                        .extend(&bytes);
                    json!({"return": {"count": bytes.len(), "eof": false}})
                }
                "guest-file-close" => json!({"return": {}}),
                other => panic!("unknown agent command {other}"),
            };
            parse_reply(command, &reply.to_string())
        }
    }

    #[test]
    fn exec_and_status_give_the_exit_code() {
        let agent = Agent::new(FakeAgent::default());
        let argv = ["sh", "-c", "exit 3"].map(String::from);
        assert_eq!(agent.run(&argv, Duration::from_secs(5)).unwrap(), 3);
        let sent = agent.transport.sent.lock().unwrap();
        assert_eq!(
            sent[0],
            r#"{"arguments":{"arg":["-c","exit 3"],"capture-output":false,"path":"sh"},"execute":"guest-exec"}"#
        );
        assert_eq!(
            sent[1],
            r#"{"arguments":{"pid":1003},"execute":"guest-exec-status"}"#
        );
    }

    #[test]
    fn files_go_in_and_out_in_chunks_and_a_growing_file_is_read_from_an_offset() {
        let agent = Agent::new(FakeAgent::default());
        let data: Vec<u8> = (0..(CHUNK * 2 + 100)).map(|i| (i % 251) as u8).collect();
        agent.copy_in(&data, "/tmp/x").unwrap();
        assert_eq!(agent.copy_out("/tmp/x").unwrap(), data);
        assert_eq!(agent.read_at("/tmp/x", 10, 5).unwrap(), &data[10..15]);
        assert_eq!(agent.read_at("/tmp/x", data.len() as u64, 5).unwrap(), b"");
        assert_eq!(agent.read_at("/var/log/qci/none.log", 0, 5).unwrap(), b"");
        assert!(matches!(
            agent.copy_out("/nope"),
            Err(GuestError::Failed(why)) if why == "/nope: No such file"
        ));
        let sent = agent.transport.sent.lock().unwrap();
        let writes = sent
            .iter()
            .filter(|m| m.contains("guest-file-write"))
            .count();
        assert_eq!(writes, 3, "three chunks");
    }

    #[test]
    fn agent_errors_are_reported_with_their_description() {
        let e = parse_reply(
            "guest-exec",
            r#"{"error":{"class":"GenericError","desc":"Guest agent command failed"}}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "dom0: guest-exec: Guest agent command failed"
        );
    }
}
