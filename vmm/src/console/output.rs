//! Guest console output, written by its own thread. The UART hands every
//! byte the guest transmits to a [`ConsoleSink`], which only appends it to
//! a bounded in-memory buffer; a writer thread empties the buffer to the
//! real output in batches. A vCPU that prints therefore never waits on a
//! `write(2)` (a slow terminal, a pipe, a file on a network share), and a
//! burst of output costs one syscall per batch instead of one per byte.
//!
//! Nothing is dropped: when the buffer is full the printing vCPU waits for
//! the writer (the guest's console runs at the speed of the output), and
//! [`ConsoleWriter::finish`] (also run on drop) writes out everything
//! buffered before the VMM exits, so the guest's last words survive.
//!
//! The one exception is an [`OutputHold`]: while securevm asks the person
//! at the terminal for something, guest output must not reach the
//! terminal (it could draw a fake prompt over the real one, or hide it).
//! The writer then writes nothing; the buffer keeps the first
//! `MAX_PENDING` bytes, and what comes beyond that is counted and dropped
//! rather than making the guest wait for as long as the person takes.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::confined::{self, Confinement, ThreadError};
use crate::sync::Unpoisoned;

/// Most bytes held for the writer; past this the producer waits.
const MAX_PENDING: usize = 64 * 1024;

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    writer_idle: bool,
    producer_waiting: bool,
    closed: bool,
    /// The writer has a batch out of `pending` and is writing it.
    writing: bool,
    /// Guest output is held back (see [`OutputHold`]).
    held: bool,
    /// Bytes dropped because the buffer was full while held.
    dropped_while_held: u64,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// The writer waits here for bytes or for the close.
    has_bytes: Condvar,
    /// A producer facing a full buffer waits here.
    has_room: Condvar,
    /// A hold waits here for the batch being written to be out.
    batch_written: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unpoisoned()
    }
}

/// The UART's end: [`Write`] that queues bytes for the writer thread.
pub struct ConsoleSink {
    shared: Arc<Shared>,
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut state = self.shared.lock();
        loop {
            if state.closed {
                // The VM is stopping; the writer has gone.
                return Ok(buf.len());
            }
            if state.held {
                let room = MAX_PENDING.saturating_sub(state.pending.len());
                let kept = buf.len().min(room);
                state.pending.extend_from_slice(&buf[..kept]);
                state.dropped_while_held += (buf.len() - kept) as u64;
                return Ok(buf.len());
            }
            if state.pending.len() < MAX_PENDING {
                break;
            }
            state.producer_waiting = true;
            state = self.shared.has_room.wait(state).unpoisoned();
        }
        let room = MAX_PENDING - state.pending.len();
        let taken = buf.len().min(room);
        state.pending.extend_from_slice(&buf[..taken]);
        // Waking the writer costs a syscall: only when it sleeps.
        if state.writer_idle {
            state.writer_idle = false;
            self.shared.has_bytes.notify_one();
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Owns the writer thread.
pub struct ConsoleWriter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ConsoleWriter {
    /// Starts the writer thread over `output`, in `confinement`.
    pub fn spawn<W>(output: W, confinement: Confinement) -> Result<(Self, ConsoleSink), ThreadError>
    where
        W: Write + Send + 'static,
    {
        let shared = Arc::new(Shared::default());
        let writer_shared = shared.clone();
        let thread = confined::spawn("console-out", confinement, move || {
            write_until_closed(&writer_shared, output);
        })?;
        let sink = ConsoleSink {
            shared: shared.clone(),
        };
        Ok((
            Self {
                shared,
                thread: Some(thread),
            },
            sink,
        ))
    }

    /// The handle that holds guest output back while securevm prompts.
    pub fn hold(&self) -> OutputHold {
        OutputHold {
            shared: self.shared.clone(),
        }
    }

    /// Writes out what is still buffered, then stops the thread. Bytes
    /// the guest prints afterwards are discarded.
    pub fn finish(&mut self) {
        {
            let mut state = self.shared.lock();
            state.closed = true;
            self.shared.has_bytes.notify_one();
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the console output thread panicked");
            }
        }
    }
}

impl Drop for ConsoleWriter {
    fn drop(&mut self) {
        self.finish();
    }
}

/// How much guest output a hold kept back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldOutput {
    /// Bytes kept, written out when the hold ends.
    pub bytes: usize,
    /// Bytes that did not fit and are lost.
    pub dropped: u64,
}

/// Stops guest output from reaching the output while securevm prompts.
#[derive(Clone)]
pub struct OutputHold {
    shared: Arc<Shared>,
}

impl OutputHold {
    /// From now on nothing the guest prints is written; returns once the
    /// batch the writer may be writing is out, so that what the caller
    /// writes next cannot be interleaved with guest bytes.
    pub fn begin(&self) {
        let mut state = self.shared.lock();
        state.held = true;
        // A producer waiting for room now keeps what fits and drops the rest.
        self.shared.has_room.notify_all();
        while state.writing {
            state = self.shared.batch_written.wait(state).unpoisoned();
        }
    }

    /// Ends the hold: `announce` is told how much was held back and runs
    /// before any of it is written (it says so on the terminal), then the
    /// writer resumes with the held bytes.
    pub fn end(&self, announce: impl FnOnce(HeldOutput)) {
        let held = {
            let state = self.shared.lock();
            HeldOutput {
                bytes: state.pending.len(),
                dropped: state.dropped_while_held,
            }
        };
        announce(held);
        let mut state = self.shared.lock();
        state.held = false;
        state.dropped_while_held = 0;
        if !state.pending.is_empty() && state.writer_idle {
            state.writer_idle = false;
            self.shared.has_bytes.notify_one();
        }
    }
}

fn write_until_closed<W: Write>(shared: &Shared, mut output: W) {
    let mut batch = Vec::with_capacity(MAX_PENDING);
    let mut output_failed = false;
    loop {
        {
            let mut state = shared.lock();
            // A hold ends at the close: the guest's last words still go out.
            while (state.pending.is_empty() || state.held) && !state.closed {
                state.writer_idle = true;
                state = shared.has_bytes.wait(state).unpoisoned();
            }
            if state.pending.is_empty() {
                return;
            }
            std::mem::swap(&mut batch, &mut state.pending);
            state.writing = true;
            if state.producer_waiting {
                state.producer_waiting = false;
                shared.has_room.notify_all();
            }
        }
        // A console nobody reads any more must not stop the guest: report
        // once, then discard.
        if !output_failed {
            if let Err(e) = output.write_all(&batch).and_then(|()| output.flush()) {
                log::warn!("guest console output stopped: {e}");
                output_failed = true;
            }
        }
        batch.clear();
        shared.lock().writing = false;
        shared.batch_written.notify_all();
    }
}

#[cfg(test)]
mod tests {
    // Test fixtures narrow small known values; a wrong one fails the test.
    #![allow(clippy::cast_possible_truncation)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Output that records what it got and in how many writes.
    #[derive(Clone, Default)]
    struct Recorder {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<AtomicUsize>,
        delay: Option<std::time::Duration>,
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(delay) = self.delay {
                std::thread::sleep(delay);
            }
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_byte_arrives_in_order_after_finish() {
        let recorder = Recorder::default();
        let (mut writer, mut sink) =
            ConsoleWriter::spawn(recorder.clone(), Confinement::Unfiltered).unwrap();
        let expected: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for byte in &expected {
            sink.write_all(std::slice::from_ref(byte)).unwrap();
        }
        writer.finish();
        assert_eq!(*recorder.bytes.lock().unwrap(), expected);
    }

    #[test]
    fn a_slow_output_gets_batches_not_single_bytes() {
        let recorder = Recorder {
            delay: Some(std::time::Duration::from_millis(2)),
            ..Recorder::default()
        };
        let (mut writer, mut sink) =
            ConsoleWriter::spawn(recorder.clone(), Confinement::Unfiltered).unwrap();
        for _ in 0..5_000 {
            sink.write_all(b"x").unwrap();
        }
        writer.finish();
        assert_eq!(recorder.bytes.lock().unwrap().len(), 5_000);
        let writes = recorder.writes.load(Ordering::Relaxed);
        assert!(writes < 500, "{writes} writes for 5000 bytes");
    }

    #[test]
    fn a_full_buffer_makes_the_producer_wait_instead_of_dropping() {
        let recorder = Recorder {
            delay: Some(std::time::Duration::from_millis(20)),
            ..Recorder::default()
        };
        let (mut writer, mut sink) =
            ConsoleWriter::spawn(recorder.clone(), Confinement::Unfiltered).unwrap();
        let burst = vec![b'y'; 3 * MAX_PENDING + 17];
        sink.write_all(&burst).unwrap();
        writer.finish();
        assert_eq!(recorder.bytes.lock().unwrap().len(), burst.len());
    }

    #[test]
    fn a_failing_output_never_blocks_the_guest() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (mut writer, mut sink) = ConsoleWriter::spawn(Broken, Confinement::Unfiltered).unwrap();
        for _ in 0..(4 * MAX_PENDING / 1024) {
            sink.write_all(&[b'z'; 1024]).unwrap();
        }
        writer.finish();
    }

    #[test]
    fn held_output_waits_is_announced_and_then_written() {
        let recorder = Recorder::default();
        let (mut writer, mut sink) =
            ConsoleWriter::spawn(recorder.clone(), Confinement::Unfiltered).unwrap();
        let hold = writer.hold();
        hold.begin();
        sink.write_all(b"fake PIN: ").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            recorder.bytes.lock().unwrap().is_empty(),
            "written while held"
        );
        let mut announced = None;
        hold.end(|held| {
            // Told before any held byte goes out.
            assert!(recorder.bytes.lock().unwrap().is_empty());
            announced = Some(held);
        });
        assert_eq!(
            announced,
            Some(HeldOutput {
                bytes: 10,
                dropped: 0
            })
        );
        writer.finish();
        assert_eq!(*recorder.bytes.lock().unwrap(), b"fake PIN: ");
    }

    #[test]
    fn a_hold_keeps_the_first_bytes_and_counts_the_rest_without_blocking_the_guest() {
        let recorder = Recorder::default();
        let (mut writer, mut sink) =
            ConsoleWriter::spawn(recorder.clone(), Confinement::Unfiltered).unwrap();
        let hold = writer.hold();
        hold.begin();
        let burst: Vec<u8> = (0..MAX_PENDING + 1000).map(|i| (i % 251) as u8).collect();
        let (done, guest_done) = std::sync::mpsc::channel();
        let guest = {
            let burst = burst.clone();
            std::thread::spawn(move || {
                sink.write_all(&burst).unwrap();
                sink.write_all(b"more").unwrap();
                done.send(()).unwrap();
            })
        };
        assert!(
            guest_done
                .recv_timeout(std::time::Duration::from_secs(5))
                .is_ok(),
            "the guest waited for the person at the prompt"
        );
        guest.join().unwrap();
        let mut announced = None;
        hold.end(|held| announced = Some(held));
        assert_eq!(
            announced,
            Some(HeldOutput {
                bytes: MAX_PENDING,
                dropped: 1004
            })
        );
        writer.finish();
        assert_eq!(*recorder.bytes.lock().unwrap(), burst[..MAX_PENDING]);
    }

    #[test]
    fn a_hold_begins_only_once_the_batch_being_written_is_out() {
        let recorder = Recorder {
            delay: Some(std::time::Duration::from_millis(200)),
            ..Recorder::default()
        };
        let (mut writer, mut sink) =
            ConsoleWriter::spawn(recorder.clone(), Confinement::Unfiltered).unwrap();
        sink.write_all(b"in flight").unwrap();
        // Let the writer take the batch into its slow write.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let hold = writer.hold();
        hold.begin();
        assert_eq!(*recorder.bytes.lock().unwrap(), b"in flight");
        hold.end(|_| {});
        writer.finish();
    }
}
