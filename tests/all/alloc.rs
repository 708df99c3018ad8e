//! The hot path allocates what a static header costs, plus the replay copy when the retry is on.
//!
//! The test binary's allocator also counts the bytes each thread allocates, which the fault
//! matrix reads to show that a client's memory stays bounded, and the bytes in use by the
//! whole process, which the soak test reads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::{Future, ready};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::Empty;
use oauth_refresh::RefreshLayer;
use tower::{Layer, Service};
use tower_http::set_header::SetRequestHeaderLayer;

use crate::support::TestSource;

/// Counts allocations and allocated bytes of the current thread, so parallel tests do not
/// interfere, and the bytes in use by the whole process.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    static ALLOCATED_BYTES: Cell<usize> = const { Cell::new(0) };
    static THREAD_LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
}

/// Bytes allocated on the current thread less bytes freed on it: what a test running on a
/// current-thread runtime holds, whatever other tests do meanwhile.
pub fn thread_live_bytes() -> isize {
    THREAD_LIVE_BYTES.with(Cell::get)
}

fn live_here(bytes: isize) {
    // `try_with`: a thread's own teardown frees after its thread-locals are gone.
    let _ = THREAD_LIVE_BYTES.try_with(|n| n.set(n.get().wrapping_add(bytes)));
}

/// Bytes the current thread has allocated so far, never decreased by frees: a reallocation
/// counts its whole new size. Compare two readings to see what code in between allocated.
pub fn allocated_bytes() -> usize {
    ALLOCATED_BYTES.with(Cell::get)
}

fn count(bytes: usize) {
    ALLOCATIONS.with(|n| n.set(n.get() + 1));
    ALLOCATED_BYTES.with(|n| n.set(n.get().wrapping_add(bytes)));
}

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Bytes allocated and not yet freed, by every thread of the test binary. Other tests run in
/// parallel, so compare readings with a margin, or take the peak of a test's own window.
// Read by the fault matrix, which needs reqwest.
#[cfg_attr(not(feature = "reqwest"), allow(dead_code))]
pub fn live_bytes() -> usize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        live_here(layout.size() as isize);
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        live_here(-(layout.size() as isize));
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            live_here(new_size as isize - layout.size() as isize);
            LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations of `rounds` ready-then-call-then-poll rounds, request building included.
fn allocations<S>(service: &mut S, rounds: usize) -> usize
where
    S: Service<Request<()>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let before = ALLOCATIONS.with(Cell::get);
    for _ in 0..rounds {
        let request = Request::get("https://api.test/items").body(()).unwrap();
        assert!(service.poll_ready(&mut cx).is_ready());
        let future = pin!(service.call(request));
        match future.poll(&mut cx) {
            Poll::Ready(Ok(response)) => drop(response),
            _ => panic!("the inner service answers at once"),
        }
    }
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn fresh_requests_allocate_as_a_static_header_replay_copy_included() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let inner = tower::service_fn(|_: Request<()>| {
        ready(Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())))
    });

    let mut baseline = SetRequestHeaderLayer::overriding(
        header::AUTHORIZATION,
        HeaderValue::from_static("Bearer at-1"),
    )
    .layer(inner);
    let layer = RefreshLayer::new(TestSource::new(Duration::from_secs(3600)));
    runtime.block_on(layer.refresh()).unwrap();
    let mut with_retry = layer.layer(inner);
    let mut without_retry = layer.clone().retry(false).layer(inner);

    // warm up thread-locals (arc-swap's debt list among them)
    allocations(&mut with_retry, 10);
    allocations(&mut without_retry, 10);

    let static_header = allocations(&mut baseline, 100);
    // Reading the token, attaching it and classifying the answer allocate nothing.
    assert_eq!(allocations(&mut without_retry, 100), static_header);
    // The replay copy lives in the response future: for a request without headers or
    // extensions it allocates nothing (with them, their list and map are cloned).
    assert_eq!(allocations(&mut with_retry, 100), static_header);
}

#[test]
fn allocated_bytes_counts_this_threads_allocations_only() {
    let before = allocated_bytes();
    let buffer = std::hint::black_box(vec![0u8; 100_000]);
    let other_thread = std::thread::spawn(|| std::hint::black_box(vec![0u8; 1 << 20]).len());
    assert_eq!(other_thread.join().unwrap(), 1 << 20);
    let allocated = allocated_bytes() - before;
    // The vector, plus what spawning and joining a thread allocate here: never the other
    // thread's mebibyte.
    assert!((100_000..500_000).contains(&allocated), "{allocated}");
    drop(buffer);
    assert!(
        allocated_bytes() - before >= allocated,
        "frees never lower the count"
    );
}
