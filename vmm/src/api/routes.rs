//! Maps a parsed request to a controller call and the result to a
//! response. Unknown paths are 404, known paths with another method 405,
//! bodies that are not the JSON a route expects 400.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::controller::VmController;
use super::http::{Request, Response};
use super::protocol::{
    ApiError, AttachRequest, KeyRequest, PolicyUpload, RunState, ShutdownRequest, StateReport,
    TypeRequest, MAX_SHUTDOWN_TIMEOUT_SECS,
};

/// Every route as (method, path); `{id}` stands for one path segment.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/status"),
    ("PUT", "/policy"),
    ("PUT", "/vm/pause"),
    ("PUT", "/vm/resume"),
    ("PUT", "/vm/shutdown"),
    ("PUT", "/external"),
    ("DELETE", "/external/{id}"),
    ("GET", "/display/screenshot"),
    ("PUT", "/display/type"),
    ("PUT", "/display/key"),
];

/// Answers one request.
pub fn handle(request: &Request, vm: &dyn VmController) -> Response {
    match dispatch(request, vm) {
        Ok(response) => response,
        Err(error) => error_response(&error),
    }
}

/// The response for a request that failed.
pub fn error_response(error: &ApiError) -> Response {
    json_response(error.status(), &error.body())
}

fn dispatch(request: &Request, vm: &dyn VmController) -> Result<Response, ApiError> {
    let method = request.method.as_str();
    let path = request.path.as_str();
    match (method, path) {
        ("GET", "/status") => Ok(ok(&vm.status())),
        ("PUT", "/policy") => {
            let upload: PolicyUpload = parse_body(request)?;
            Ok(ok(&vm.push_policy(upload)?))
        }
        ("PUT", "/vm/pause") => {
            expect_empty_object(request)?;
            vm.pause()?;
            Ok(ok(&StateReport {
                state: RunState::Paused,
            }))
        }
        ("PUT", "/vm/resume") => {
            expect_empty_object(request)?;
            vm.resume()?;
            Ok(ok(&StateReport {
                state: RunState::Running,
            }))
        }
        ("PUT", "/vm/shutdown") => {
            let shutdown: ShutdownRequest = if request.body.is_empty() {
                parse_json(b"{}")?
            } else {
                parse_body(request)?
            };
            if shutdown.timeout_secs == 0 || shutdown.timeout_secs > MAX_SHUTDOWN_TIMEOUT_SECS {
                return Err(ApiError::BadRequest(format!(
                    "timeout_secs {} is out of range; give 1-{MAX_SHUTDOWN_TIMEOUT_SECS}",
                    shutdown.timeout_secs
                )));
            }
            let report = vm.shutdown(Duration::from_secs(shutdown.timeout_secs))?;
            Ok(ok(&report))
        }
        ("PUT", "/external") => {
            let attach: AttachRequest = parse_body(request)?;
            let id = vm.attach_external(&attach.path)?;
            Ok(ok(&serde_json::json!({ "id": id })))
        }
        ("GET", "/display/screenshot") => Ok(ok(&vm.screenshot()?)),
        ("PUT", "/display/type") => {
            let typed: TypeRequest = parse_body(request)?;
            vm.type_text(&typed.text, typed.layout)?;
            Ok(ok(&serde_json::json!({})))
        }
        ("PUT", "/display/key") => {
            let key: KeyRequest = parse_body(request)?;
            vm.press_key(&key.name)?;
            Ok(ok(&serde_json::json!({})))
        }
        ("DELETE", _) => match external_id(path) {
            Some(id) => {
                vm.detach_external(id)?;
                Ok(ok(&serde_json::json!({})))
            }
            None => Err(unknown(method, path)),
        },
        _ => Err(unknown(method, path)),
    }
}

fn external_id(path: &str) -> Option<&str> {
    path.strip_prefix("/external/")
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

fn route_matches(route: &str, path: &str) -> bool {
    match route.strip_suffix("{id}") {
        Some(prefix) => path.starts_with(prefix) && external_id(path).is_some(),
        None => route == path,
    }
}

fn unknown(method: &str, path: &str) -> ApiError {
    let methods: Vec<&str> = ROUTES
        .iter()
        .filter(|(_, route)| route_matches(route, path))
        .map(|(m, _)| *m)
        .collect();
    if !methods.is_empty() {
        ApiError::MethodNotAllowed(format!(
            "{path} does not take {method}; use {}",
            methods.join(" or ")
        ))
    } else {
        ApiError::NotFound(format!(
            "unknown command {method} {}; see docs/api.md for the commands",
            path.escape_debug()
        ))
    }
}

fn parse_body<T: DeserializeOwned>(request: &Request) -> Result<T, ApiError> {
    parse_json(&request.body)
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not valid: {e}")))
}

/// Pause and resume take no arguments: an empty body or `{}`.
fn expect_empty_object(request: &Request) -> Result<(), ApiError> {
    if request.body.is_empty() {
        return Ok(());
    }
    let value: serde_json::Map<String, serde_json::Value> = parse_body(request)?;
    if value.is_empty() {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "this command takes no arguments; send an empty body or {}".into(),
        ))
    }
}

fn ok<T: Serialize>(value: &T) -> Response {
    json_response(200, value)
}

fn json_response<T: Serialize>(status: u16, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => Response { status, body },
        Err(e) => Response {
            status: 500,
            body: serde_json::json!({ "error": format!("encoding the response failed: {e}") })
                .to_string()
                .into_bytes(),
        },
    }
}
