//! The display thread: it serves viewers on the RFB socket (at most
//! [`MAX_VIEWERS`] at once, each through an `rfb::Session`), sends them
//! what changed on the screen, and hands their key, pointer and
//! clipboard events to securevm's prompt or to the guest. It sleeps in
//! poll on the listener, the viewers, its wake eventfd (something
//! changed), its stop eventfd and the guest's clipboard port.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use rfb::session::{Event, Session};
use vmm_sys_util::eventfd::EventFd;

use super::state::Changes;
use super::Shared;
use crate::api::BoundSocket;
use crate::sync::Unpoisoned;

/// Viewers served at once; a further one is turned away.
pub const MAX_VIEWERS: usize = 4;
/// Bytes read from a viewer per wake-up.
const READ_CHUNK: usize = 64 * 1024;
/// The name viewers show for the screen.
const DESKTOP_NAME: &str = "securevm";

struct Viewer {
    stream: UnixStream,
    session: Session,
}

/// Serves `socket` until `stop` is signalled, then removes the socket
/// file (this thread's filter allows that; the main thread's does not).
pub(super) fn serve(socket: BoundSocket, shared: Arc<Shared>, stop: EventFd) {
    let listener = socket.listener();
    let mut viewers: Vec<Viewer> = Vec::new();
    let mut buffer = vec![0u8; READ_CHUNK];
    loop {
        let port = shared.clipboard_fd();
        let mut fds = vec![
            pollfd(stop.as_raw_fd(), libc::POLLIN),
            pollfd(shared.wake.as_raw_fd(), libc::POLLIN),
            pollfd(listener.as_raw_fd(), libc::POLLIN),
            pollfd(port.unwrap_or(-1), libc::POLLIN),
        ];
        for viewer in &viewers {
            let mut events = libc::POLLIN;
            if !viewer.session.pending_output().is_empty() {
                events |= libc::POLLOUT;
            }
            fds.push(pollfd(viewer.stream.as_raw_fd(), events));
        }
        if let Err(e) = poll(&mut fds) {
            log::error!("display: poll failed, the display stops: {e}");
            break;
        }
        if fds[0].revents != 0 {
            break;
        }
        if fds[1].revents != 0 {
            let _ = shared.wake.read();
        }
        if fds[2].revents != 0 {
            accept_viewers(listener, &shared, &mut viewers);
        }
        let mut copied_in_guest = Vec::new();
        if fds[3].revents != 0 {
            copied_in_guest = shared.read_clipboard();
        }
        shared.flush_clipboard();
        // Viewers accepted above have no entry in `fds`: they are polled
        // from the next round on.
        let polled = fds.len() - 4;
        let mut closed = vec![false; viewers.len()];
        for (index, viewer) in viewers.iter_mut().enumerate().take(polled) {
            let revents = fds[4 + index].revents;
            if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                closed[index] = !read_viewer(viewer, &shared, &mut buffer);
            }
        }
        let changes = shared.take_changes();
        for (index, viewer) in viewers.iter_mut().enumerate() {
            if closed[index] {
                continue;
            }
            for text in &copied_in_guest {
                viewer.session.send_cut_text(text);
            }
            update_viewer(viewer, &shared, &changes);
            closed[index] = !write_viewer(viewer);
        }
        let mut index = 0;
        viewers.retain(|_| {
            let keep = !closed[index];
            index += 1;
            keep
        });
    }
    shared.stopped();
    drop(socket);
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn poll(fds: &mut [libc::pollfd]) -> io::Result<()> {
    loop {
        // SAFETY: `fds` is a valid, writable array of that many pollfds
        // for the duration of the call.
        let result = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if result >= 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

fn accept_viewers(listener: &UnixListener, shared: &Shared, viewers: &mut Vec<Viewer>) {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                log::warn!("display: accepting a viewer failed: {e}");
                return;
            }
        };
        if viewers.len() >= MAX_VIEWERS {
            log::warn!("display: a viewer was turned away: {MAX_VIEWERS} are connected already");
            continue;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            log::warn!("display: a viewer's socket cannot be made non-blocking: {e}");
            continue;
        }
        let (width, height) = shared.shown_size();
        log::info!("display: a viewer connected");
        viewers.push(Viewer {
            stream,
            session: Session::new(width, height, DESKTOP_NAME),
        });
    }
}

/// Reads what a viewer sent and acts on it; false when it must go.
fn read_viewer(viewer: &mut Viewer, shared: &Shared, buffer: &mut [u8]) -> bool {
    let read = match viewer.stream.read(buffer) {
        Ok(0) => {
            log::info!("display: a viewer disconnected");
            return false;
        }
        Ok(read) => read,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return true,
        Err(e) => {
            log::info!("display: a viewer's connection failed: {e}");
            return false;
        }
    };
    match viewer.session.receive(&buffer[..read]) {
        Ok(events) => {
            for event in events {
                handle_event(shared, event);
            }
            true
        }
        Err(e) => {
            log::warn!("display: a viewer broke the protocol and was disconnected: {e}");
            // A refused handshake says why; then the connection ends.
            let _ = viewer.stream.write(viewer.session.pending_output());
            false
        }
    }
}

fn handle_event(shared: &Shared, event: Event) {
    match event {
        Event::UpdateRequested { .. } => {}
        Event::CutText(text) => shared.viewer_copied(&text),
        Event::Key { down, keysym, .. } if shared.prompt_key(keysym, down) => {}
        event => shared.guest_input(&event),
    }
}

fn update_viewer(viewer: &mut Viewer, shared: &Shared, changes: &Changes) {
    let state = shared.state.lock().unpoisoned();
    let shown = state.shown();
    if changes.resized {
        viewer.session.resize(shown.width, shown.height);
    }
    if let Some(cursor) = &changes.cursor {
        viewer.session.set_cursor(cursor.clone());
    }
    viewer
        .session
        .send_update(&shown.surface(), &changes.damage);
}

/// Writes what is pending to a viewer, as far as its socket takes it;
/// false when it must go.
fn write_viewer(viewer: &mut Viewer) -> bool {
    while !viewer.session.pending_output().is_empty() {
        match viewer.stream.write(viewer.session.pending_output()) {
            Ok(0) => return false,
            Ok(written) => viewer.session.consume_output(written),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::info!("display: writing to a viewer failed: {e}");
                return false;
            }
        }
    }
    true
}
