//! The deterministic, contained WASI environment a job sees: fixed clocks, a
//! seeded random stream, bounded output capture and a non-blocking
//! `poll_oneoff`.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use wasmtime::{Caller, Extern, Memory};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// The instant the guest's wall clock is frozen at, in seconds since the Unix
/// epoch (2024-01-01T00:00:00Z). The monotonic clock is frozen at 0.
pub const FIXED_WALL_CLOCK_SECS: u64 = 1_704_067_200;

/// A wall clock that always reports [`FIXED_WALL_CLOCK_SECS`].
pub(crate) struct FixedWallClock;

impl HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        Duration::from_secs(FIXED_WALL_CLOCK_SECS)
    }
}

/// A monotonic clock that never advances.
pub(crate) struct FixedMonotonicClock;

impl HostMonotonicClock for FixedMonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        0
    }
}

/// Deterministic random generator: the BLAKE3 extendable output of a seed
/// derived from the job. Cryptographically strong, but fully reproducible.
pub(crate) struct SeededRng(blake3::OutputReader);

impl SeededRng {
    /// A stream for `purpose`, keyed by the job identity (`seed`).
    pub(crate) fn new(purpose: &str, seed: &[u8; 32]) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key(purpose);
        hasher.update(seed);
        Self(hasher.finalize_xof())
    }
}

impl rand_core::TryRng for SeededRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.0.fill(&mut b);
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.0.fill(&mut b);
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.fill(dst);
        Ok(())
    }
}

/// What a [`CapturedOutput`] does with bytes beyond its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// Refuse the write and trap the guest (stdout).
    Trap,
    /// Keep the first `limit` bytes and drop the rest silently (stderr).
    Truncate,
}

#[derive(Debug)]
struct CapturedState {
    buf: Vec<u8>,
    limit: usize,
    mode: Overflow,
    overflowed: bool,
}

/// An in-memory stdout/stderr with a hard size limit.
///
/// Unlike wasmtime-wasi's `MemoryOutputPipe`, overflowing it is recorded (so
/// the sandbox can report [`ExecError::OutputTooLarge`](crate::ExecError))
/// and, in [`Overflow::Trap`] mode, stops the guest at once.
#[derive(Debug, Clone)]
pub(crate) struct CapturedOutput(Arc<Mutex<CapturedState>>);

impl CapturedOutput {
    pub(crate) fn new(limit: usize, mode: Overflow) -> Self {
        Self(Arc::new(Mutex::new(CapturedState {
            buf: Vec::new(),
            limit,
            mode,
            overflowed: false,
        })))
    }

    fn state(&self) -> MutexGuard<'_, CapturedState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the guest tried to write past the limit.
    pub(crate) fn overflowed(&self) -> bool {
        self.state().overflowed
    }

    /// Takes the captured bytes.
    pub(crate) fn take(&self) -> Vec<u8> {
        std::mem::take(&mut self.state().buf)
    }

    /// Appends `bytes`; `Err(())` when the write is refused (trap mode).
    fn append(&self, bytes: &[u8]) -> Result<(), ()> {
        let mut st = self.state();
        let room = st.limit.saturating_sub(st.buf.len());
        if bytes.len() <= room {
            st.buf.extend_from_slice(bytes);
            return Ok(());
        }
        st.overflowed = true;
        match st.mode {
            Overflow::Trap => Err(()),
            Overflow::Truncate => {
                st.buf.extend_from_slice(&bytes[..room]);
                Ok(())
            }
        }
    }

    /// Write permit: in trap mode one byte more than the remaining room, so
    /// that an overflowing write is attempted (and trapped) instead of the
    /// writer waiting forever for room that never comes.
    fn permit(&self) -> StreamResult<usize> {
        let st = self.state();
        match st.mode {
            Overflow::Trap if st.overflowed => Err(overflow_error()),
            Overflow::Trap => Ok(st.limit.saturating_sub(st.buf.len()).saturating_add(1)),
            Overflow::Truncate => Ok(64 * 1024),
        }
    }
}

fn overflow_error() -> StreamError {
    StreamError::Trap(wasmtime::Error::msg("output limit exceeded"))
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes).map_err(|()| overflow_error())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.permit()
    }
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(match self.append(buf) {
            Ok(()) => Ok(buf.len()),
            Err(()) => Err(io::Error::other("output limit exceeded")),
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

// WASI preview 1 constants used by `poll_oneoff`.
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: u16 = 8;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
const EVENTTYPE_CLOCK: u8 = 0;
const EVENTTYPE_FD_READ: u8 = 1;
const EVENTTYPE_FD_WRITE: u8 = 2;
const SUBSCRIPTION_SIZE: u64 = 48;
const EVENT_SIZE: u64 = 32;
/// Fuel charged per subscription, so that huge subscription arrays are paid
/// for like the guest loop that would process them.
const FUEL_PER_SUBSCRIPTION: u64 = 64;

/// Replacement for `wasi_snapshot_preview1::poll_oneoff`.
///
/// Time is frozen in the sandbox, so every clock subscription is considered
/// expired immediately; stdin and stdout/stderr are in-memory and always
/// ready. The call therefore never blocks the host thread (the stock
/// implementation would really sleep, out of reach of the epoch deadline) and
/// its result is deterministic.
pub(crate) fn poll_oneoff<T>(
    mut caller: Caller<'_, T>,
    subs_ptr: i32,
    events_ptr: i32,
    nsubs: i32,
    nevents_ptr: i32,
) -> wasmtime::Result<i32> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return Ok(ERRNO_FAULT);
    };
    let nsubs = u64::from(nsubs as u32);
    if nsubs == 0 {
        return Ok(ERRNO_INVAL);
    }
    let cost = nsubs.saturating_mul(FUEL_PER_SUBSCRIPTION);
    let fuel = caller.get_fuel()?;
    if fuel < cost {
        caller.set_fuel(0)?;
        return Err(wasmtime::Trap::OutOfFuel.into());
    }
    caller.set_fuel(fuel - cost)?;

    let subs = u64::from(subs_ptr as u32);
    let events = u64::from(events_ptr as u32);
    for i in 0..nsubs {
        let mut sub = [0u8; SUBSCRIPTION_SIZE as usize];
        if read(&memory, &caller, subs + i * SUBSCRIPTION_SIZE, &mut sub).is_err() {
            return Ok(ERRNO_FAULT);
        }
        let tag = sub[8];
        let fd = u32::from_le_bytes([sub[16], sub[17], sub[18], sub[19]]);
        let error = match tag {
            EVENTTYPE_CLOCK => 0,
            EVENTTYPE_FD_READ if fd == 0 => 0,
            EVENTTYPE_FD_WRITE if fd == 1 || fd == 2 => 0,
            EVENTTYPE_FD_READ | EVENTTYPE_FD_WRITE => ERRNO_BADF,
            _ => return Ok(ERRNO_INVAL),
        };
        let mut event = [0u8; EVENT_SIZE as usize];
        event[0..8].copy_from_slice(&sub[0..8]); // userdata
        event[8..10].copy_from_slice(&error.to_le_bytes());
        event[10] = tag;
        if write(&memory, &mut caller, events + i * EVENT_SIZE, &event).is_err() {
            return Ok(ERRNO_FAULT);
        }
    }
    let n = (nsubs as u32).to_le_bytes();
    if write(&memory, &mut caller, u64::from(nevents_ptr as u32), &n).is_err() {
        return Ok(ERRNO_FAULT);
    }
    Ok(ERRNO_SUCCESS)
}

fn read<T>(memory: &Memory, caller: &Caller<'_, T>, at: u64, buf: &mut [u8]) -> Result<(), ()> {
    let at = usize::try_from(at).map_err(|_| ())?;
    memory.read(caller, at, buf).map_err(|_| ())
}

fn write<T>(memory: &Memory, caller: &mut Caller<'_, T>, at: u64, buf: &[u8]) -> Result<(), ()> {
    let at = usize::try_from(at).map_err(|_| ())?;
    memory.write(caller, at, buf).map_err(|_| ())
}
