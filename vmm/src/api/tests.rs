//! The control server end to end over a real Unix socket, against a fake
//! VM: every bad input gets an error answer, and the fake VM sees no call
//! (its state is unchanged) unless the request was valid.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::controller::VmController;
use super::http::{decode_response, encode_request, read_reply, Response};
use super::protocol::*;
use super::server::{ApiServer, BoundSocket, ServerConfig, SocketError};
use crate::confined::Confinement;

/// Records every call; status reflects the pause state and policy version.
#[derive(Default)]
struct FakeVm {
    calls: Mutex<Vec<String>>,
    paused: Mutex<bool>,
    version: Mutex<u64>,
    /// Makes `status` take this long (a busy worker).
    status_delay: Mutex<Duration>,
}

impl FakeVm {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn record(&self, call: &str) {
        self.calls.lock().unwrap().push(call.to_string());
    }
}

impl VmController for FakeVm {
    fn status(&self) -> VmStatus {
        let delay = *self.status_delay.lock().unwrap();
        thread::sleep(delay);
        VmStatus {
            state: if *self.paused.lock().unwrap() {
                RunState::Paused
            } else {
                RunState::Running
            },
            user: None,
            role: Some("staff".into()),
            policy_version: Some(*self.version.lock().unwrap()),
            devices: vec![],
            network: vec![],
            media: MediaCounters::default(),
            removable: vec![],
        }
    }

    fn push_policy(&self, upload: PolicyUpload) -> Result<PolicyApplied, ApiError> {
        self.record("push");
        if upload.signature != "good" {
            return Err(ApiError::PolicyRefused("bad signature".into()));
        }
        let mut version = self.version.lock().unwrap();
        *version += 1;
        Ok(PolicyApplied {
            version: *version,
            previous_version: *version - 1,
            role: "staff".into(),
            network_devices: 1,
        })
    }

    fn pause(&self) -> Result<(), ApiError> {
        self.record("pause");
        *self.paused.lock().unwrap() = true;
        Ok(())
    }

    fn resume(&self) -> Result<(), ApiError> {
        self.record("resume");
        *self.paused.lock().unwrap() = false;
        Ok(())
    }

    fn shutdown(&self, timeout: Duration) -> Result<ShutdownReport, ApiError> {
        self.record(&format!("shutdown {}", timeout.as_secs()));
        Ok(ShutdownReport {
            outcome: ShutdownOutcome::PoweredOff,
            seconds: 0.5,
        })
    }

    fn attach_external(&self, _path: &str) -> Result<String, ApiError> {
        Err(ApiError::NotSupported("not yet".into()))
    }

    fn detach_external(&self, _id: &str) -> Result<(), ApiError> {
        Err(ApiError::NotSupported("not yet".into()))
    }

    fn screenshot(&self) -> Result<Screenshot, ApiError> {
        self.record("screenshot");
        Ok(Screenshot {
            width: 2,
            height: 1,
            png_base64: "UE5H".into(),
        })
    }

    fn type_text(&self, text: &str, layout: KeyboardLayout) -> Result<(), ApiError> {
        self.record(&format!("type {layout:?} {text}"));
        Ok(())
    }

    fn press_key(&self, name: &str) -> Result<(), ApiError> {
        self.record(&format!("key {name}"));
        Ok(())
    }
}

struct Server {
    dir: PathBuf,
    socket: PathBuf,
    vm: Arc<FakeVm>,
    server: Option<ApiServer>,
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.server.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("securevm-api-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn start(name: &str, config: ServerConfig) -> Server {
    let dir = scratch(name);
    let socket = dir.join("api.sock");
    let vm = Arc::new(FakeVm::default());
    let bound = BoundSocket::bind(&socket).unwrap();
    let server = ApiServer::start(bound, config, vm.clone()).unwrap();
    Server {
        dir,
        socket,
        vm,
        server: Some(server),
    }
}

fn quick_config() -> ServerConfig {
    ServerConfig {
        workers: 2,
        max_body: 4096,
        request_deadline: Duration::from_millis(300),
        confinement: Confinement::Unfiltered,
    }
}

/// Sends raw bytes and reads the whole answer.
fn exchange(socket: &Path, bytes: &[u8]) -> Response {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let reply = read_reply(&mut stream).unwrap();
    decode_response(&reply).unwrap_or_else(|| panic!("not HTTP: {reply:?}"))
}

fn request(socket: &Path, method: &str, path: &str, body: &str) -> Response {
    exchange(socket, &encode_request(method, path, body.as_bytes()))
}

fn error_text(response: &Response) -> String {
    serde_json::from_slice::<ErrorBody>(&response.body)
        .unwrap()
        .error
}

#[test]
fn valid_commands_reach_the_vm() {
    let s = start("valid", quick_config());
    let status = request(&s.socket, "GET", "/status", "");
    assert_eq!(status.status, 200);
    let parsed: VmStatus = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(parsed.state, RunState::Running);

    assert_eq!(request(&s.socket, "PUT", "/vm/pause", "").status, 200);
    assert_eq!(request(&s.socket, "PUT", "/vm/resume", "{}").status, 200);
    let pushed = request(
        &s.socket,
        "PUT",
        "/policy",
        r#"{"policy":"x","signature":"good"}"#,
    );
    assert_eq!(pushed.status, 200);
    let shutdown = request(&s.socket, "PUT", "/vm/shutdown", r#"{"timeout_secs":7}"#);
    assert_eq!(shutdown.status, 200);
    assert_eq!(
        s.vm.calls(),
        ["pause", "resume", "push", "shutdown 7"].map(String::from)
    );
}

#[test]
fn display_commands_reach_the_vm_and_bad_bodies_do_not() {
    let s = start("display", quick_config());
    let shot = request(&s.socket, "GET", "/display/screenshot", "");
    assert_eq!(shot.status, 200);
    let parsed: Screenshot = serde_json::from_slice(&shot.body).unwrap();
    assert_eq!((parsed.width, parsed.height), (2, 1));
    let typed = request(
        &s.socket,
        "PUT",
        "/display/type",
        r#"{"text":"hi\n","layout":"jp"}"#,
    );
    assert_eq!(typed.status, 200);
    assert_eq!(
        request(&s.socket, "PUT", "/display/type", r#"{"text":"x"}"#).status,
        200
    );
    assert_eq!(
        request(
            &s.socket,
            "PUT",
            "/display/key",
            r#"{"name":"ctrl+alt+f2"}"#
        )
        .status,
        200
    );
    for (path, body) in [
        ("/display/type", r#"{"text":"x","layout":"de"}"#),
        ("/display/type", r#"{"text":"x","extra":1}"#),
        ("/display/type", r#"{}"#),
        ("/display/key", r#"{"name":7}"#),
        ("/display/key", r#"{"key":"a"}"#),
    ] {
        let response = request(&s.socket, "PUT", path, body);
        assert_eq!(response.status, 400, "{path} {body}");
    }
    assert_eq!(
        request(&s.socket, "PUT", "/display/screenshot", "{}").status,
        405
    );
    assert_eq!(
        s.vm.calls(),
        ["screenshot", "type Jp hi\n", "type Us x", "key ctrl+alt+f2"].map(String::from)
    );
}

#[test]
fn malformed_json_is_400_and_changes_nothing() {
    let s = start("malformed", quick_config());
    for body in [
        "{not json",
        "[]",
        r#"{"policy":"x"}"#,
        r#"{"policy":"x","signature":"good","extra":1}"#,
        "\u{0}\u{1}",
    ] {
        let response = request(&s.socket, "PUT", "/policy", body);
        assert_eq!(response.status, 400, "{body}");
        assert!(error_text(&response).contains("not valid"), "{body}");
    }
    for body in [r#"{"timeout_secs":"soon"}"#, r#"{"timeout_secs":0}"#] {
        assert_eq!(
            request(&s.socket, "PUT", "/vm/shutdown", body).status,
            400,
            "{body}"
        );
    }
    assert_eq!(
        request(&s.socket, "PUT", "/vm/pause", r#"{"now":true}"#).status,
        400
    );
    assert!(s.vm.calls().is_empty(), "{:?}", s.vm.calls());
}

#[test]
fn a_refused_policy_is_422_and_the_version_stays() {
    let s = start("refused", quick_config());
    let response = request(
        &s.socket,
        "PUT",
        "/policy",
        r#"{"policy":"x","signature":"forged"}"#,
    );
    assert_eq!(response.status, 422);
    assert_eq!(error_text(&response), "bad signature");
    let status: VmStatus =
        serde_json::from_slice(&request(&s.socket, "GET", "/status", "").body).unwrap();
    assert_eq!(status.policy_version, Some(0));
}

#[test]
fn unknown_commands_are_404_and_wrong_methods_405() {
    let s = start("unknown", quick_config());
    let response = request(&s.socket, "GET", "/reboot-now", "");
    assert_eq!(response.status, 404);
    assert!(error_text(&response).contains("unknown command GET /reboot-now"));
    let response = request(&s.socket, "POST", "/status", "");
    assert_eq!(response.status, 405);
    assert!(error_text(&response).contains("use GET"));
    assert_eq!(request(&s.socket, "GET", "/vm/pause", "").status, 405);
    assert_eq!(request(&s.socket, "DELETE", "/external/", "").status, 404);
    assert!(s.vm.calls().is_empty());
}

#[test]
fn hot_plug_is_answered_not_supported() {
    let s = start("hotplug", quick_config());
    assert_eq!(
        request(&s.socket, "PUT", "/external", r#"{"path":"/dev/sdb"}"#).status,
        501
    );
    assert_eq!(
        request(&s.socket, "DELETE", "/external/stick", "").status,
        501
    );
}

#[test]
fn an_oversized_request_is_413() {
    let s = start("oversized", quick_config());
    let big = format!(
        r#"{{"policy":"{}","signature":"good"}}"#,
        "a".repeat(10_000)
    );
    let response = request(&s.socket, "PUT", "/policy", &big);
    assert_eq!(response.status, 413);
    assert!(s.vm.calls().is_empty());
    // The server still answers afterwards.
    assert_eq!(request(&s.socket, "GET", "/status", "").status, 200);
}

#[test]
fn a_client_disconnecting_mid_request_leaves_the_server_working() {
    let s = start("disconnect", quick_config());
    for partial in [
        &b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 2\r\n\r\n{"[..],
        b"PUT /vm/pa",
        b"",
    ] {
        let mut stream = UnixStream::connect(&s.socket).unwrap();
        stream.write_all(partial).unwrap();
        drop(stream);
    }
    assert_eq!(request(&s.socket, "GET", "/status", "").status, 200);
    assert!(s.vm.calls().is_empty(), "{:?}", s.vm.calls());
}

#[test]
fn a_stalled_client_gets_408_and_frees_its_worker() {
    let s = start("stall", quick_config());
    let mut stalled = UnixStream::connect(&s.socket).unwrap();
    stalled
        .write_all(b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 2\r\n\r\n")
        .unwrap();
    let start = Instant::now();
    let reply = read_reply(&mut stalled).unwrap();
    assert_eq!(decode_response(&reply).unwrap().status, 408);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(s.vm.calls().is_empty());
    assert_eq!(request(&s.socket, "PUT", "/vm/pause", "").status, 200);
}

#[test]
fn many_concurrent_clients_are_answered_with_bounded_threads() {
    let s = start("concurrent", quick_config());
    *s.vm.status_delay.lock().unwrap() = Duration::from_millis(400);
    let threads_before = thread_count();
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let socket = s.socket.clone();
            thread::spawn(move || request(&socket, "GET", "/status", "").status)
        })
        .collect();
    let statuses: Vec<u16> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let served = statuses.iter().filter(|&&s| s == 200).count();
    let busy = statuses.iter().filter(|&&s| s == 503).count();
    assert_eq!(served + busy, statuses.len(), "{statuses:?}");
    assert!(served >= 2, "{statuses:?}");
    assert!(
        busy >= 1,
        "2 workers and a queue of 2 cannot serve 16 slow requests at once"
    );
    // The server made no threads for the clients (the test's own client
    // threads are gone again).
    assert!(thread_count() <= threads_before + 1);
    *s.vm.status_delay.lock().unwrap() = Duration::ZERO;
    assert_eq!(request(&s.socket, "GET", "/status", "").status, 200);
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn the_socket_is_private_and_removed_on_stop() {
    let mut s = start("socket", quick_config());
    let mode = std::fs::metadata(&s.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    drop(s.server.take());
    assert!(!s.socket.exists());
}

#[test]
fn a_stale_socket_is_replaced_but_a_file_or_live_socket_is_refused() {
    let dir = scratch("stale");
    let path = dir.join("api.sock");
    // A socket nobody listens on any more.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let bound = BoundSocket::bind(&path).unwrap();
    // Now someone listens: a second server is refused.
    assert!(matches!(
        BoundSocket::bind(&path),
        Err(SocketError::InUse { .. })
    ));
    // A socket never served (securevm failed after binding) goes too.
    drop(bound);
    assert!(!path.exists());
    std::fs::write(&path, b"precious").unwrap();
    let err = BoundSocket::bind(&path).err().unwrap();
    assert!(matches!(err, SocketError::NotASocket { .. }), "{err}");
    assert!(err.to_string().contains("remove it or choose another path"));
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ctl_talks_to_the_server() {
    use super::client::{run, CtlArgs, CtlCommand};
    let s = start("ctl", quick_config());
    let ctl = |command| {
        run(&CtlArgs {
            api_socket: s.socket.clone(),
            command,
        })
    };
    let text = ctl(CtlCommand::Status { json: false }).unwrap();
    assert!(text.contains("state: running"), "{text}");
    assert!(text.contains("role: staff"), "{text}");
    let json = ctl(CtlCommand::Status { json: true }).unwrap();
    assert_eq!(
        serde_json::from_str::<VmStatus>(&json)
            .unwrap()
            .policy_version,
        Some(0)
    );
    assert_eq!(ctl(CtlCommand::Pause).unwrap(), "paused");
    assert_eq!(ctl(CtlCommand::Resume).unwrap(), "running");
    let policy = s.dir.join("p.toml");
    std::fs::write(&policy, "x").unwrap();
    let err = ctl(CtlCommand::PushPolicy {
        file: policy.clone(),
    })
    .unwrap_err();
    assert!(err.to_string().contains("has no signature"), "{err}");
    std::fs::write(s.dir.join("p.toml.minisig"), "forged").unwrap();
    let err = ctl(CtlCommand::PushPolicy {
        file: policy.clone(),
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "bad signature");
    std::fs::write(s.dir.join("p.toml.minisig"), "good").unwrap();
    let text = ctl(CtlCommand::PushPolicy { file: policy }).unwrap();
    assert!(
        text.starts_with("policy version 1 applied (was 0)"),
        "{text}"
    );
    let err = ctl(CtlCommand::AttachExternal {
        path: "/dev/sdb".into(),
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "not yet");
    let text = ctl(CtlCommand::Shutdown { timeout: 3 }).unwrap();
    assert!(text.contains("powered off"), "{text}");
    drop(s);
    let err = run(&CtlArgs {
        api_socket: "/nonexistent/api.sock".into(),
        command: CtlCommand::Pause,
    })
    .unwrap_err();
    assert!(err.to_string().contains("is securevm running"), "{err}");
}

/// Set in the child process of [`the_api_threads_run_under_their_seccomp_filter`].
const SECCOMP_CHILD_ENV: &str = "SECUREVM_API_SECCOMP_CHILD";

/// The server threads of the child below install the `Api` filter, then
/// serve every command against a live controller, including a policy push
/// that writes the state file, and remove the socket. A syscall missing
/// from the filter ends the child with the seccomp status.
#[test]
fn the_api_threads_run_under_their_seccomp_filter() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "api::tests::seccomp_child", "--nocapture"])
        .env(SECCOMP_CHILD_ENV, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{:?}\n{text}", output.status);
    assert!(
        text.contains("seccomp child: all commands served"),
        "{text}"
    );
}

#[test]
fn seccomp_child() {
    use super::client::{run, CtlArgs, CtlCommand};
    use super::live::{LiveVm, LiveVmParts, NetDevice};
    use crate::exit::ExitNotifier;
    use crate::kvm::vcpu::VcpuControl;
    use crate::policy::push::tests::Fixture;
    use crate::policy::{ActiveRole, PolicyVerifier};
    use crate::seccomp::ThreadKind;
    use netfilter::{Filter, FilterConfig};

    if std::env::var_os(SECCOMP_CHILD_ENV).is_none() {
        return;
    }
    let fixture = Fixture::new("seccomp");
    let config = fixture.config();
    let first = fixture.upload(7);
    let role = guest_policy::validate("p", &first.policy)
        .unwrap()
        .policy
        .roles["staff"]
        .clone();
    let (filter, control) = Filter::new(FilterConfig {
        guest_mac: [2, 0, 0, 0, 0, 1],
        guest_ipv4: vec![],
        guest_ipv6: vec![],
        conntrack_capacity: 16,
        policy: &role.network,
    });
    let (exit, exits) = ExitNotifier::new();
    let vm = Arc::new(LiveVm::new(LiveVmParts {
        user: None,
        role: Some(ActiveRole {
            name: "staff".into(),
            policy_version: 7,
            role,
        }),
        verifier: Some(PolicyVerifier::new(&config, "alice").unwrap()),
        devices: vec![],
        nets: vec![NetDevice {
            tap: "tap0".into(),
            mac: "02:00:00:00:00:01".into(),
            addresses: vec![],
            filter: control,
        }],
        media: MediaCounters::default(),
        vcpus: VcpuControl::default(),
        power_button: Box::new(|| Ok(())),
        exit,
        audit: crate::audit::Audit::disabled(),
        media_hotplug: None,
        watch_removable: false,
        display: None,
    }));
    let socket = fixture.dir.join("api.sock");
    let server = ApiServer::start(
        BoundSocket::bind(&socket).unwrap(),
        ServerConfig {
            confinement: Confinement::Seccomp(ThreadKind::Api),
            ..ServerConfig::default()
        },
        vm.clone(),
    )
    .unwrap();
    let ctl = |command| {
        run(&CtlArgs {
            api_socket: socket.clone(),
            command,
        })
    };
    ctl(CtlCommand::Status { json: true }).unwrap();
    let policy = fixture.dir.join("policy-8.toml");
    let upload = fixture.upload(8);
    std::fs::write(&policy, &upload.policy).unwrap();
    std::fs::write(fixture.dir.join("policy-8.toml.minisig"), &upload.signature).unwrap();
    ctl(CtlCommand::PushPolicy {
        file: policy.clone(),
    })
    .unwrap();
    assert_eq!(fixture.installed_version(), Some(8));
    ctl(CtlCommand::PushPolicy { file: policy }).unwrap_err();
    // No vCPUs here: pause is refused, but through the same code path.
    ctl(CtlCommand::Pause).unwrap_err();
    ctl(CtlCommand::Resume).unwrap();
    ctl(CtlCommand::AttachExternal {
        path: "/dev/null".into(),
    })
    .unwrap_err();
    let main = thread::spawn(move || {
        let reason = exits.recv().unwrap();
        vm.vm_stopped(&reason);
    });
    ctl(CtlCommand::Shutdown { timeout: 1 }).unwrap_err();
    main.join().unwrap();
    server.stop();
    assert!(!socket.exists());
    drop(filter);
    println!("seccomp child: all commands served");
}
