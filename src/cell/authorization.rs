//! The `Authorization` value requests carry, in one copy per stripe of threads.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::HeaderValue;

/// Copies of the header. Cloning a `HeaderValue` counts a reference in its bytes; with one
/// copy, every request on every core writes that one counter, and the cores pass its cache
/// line back and forth. With a copy per stripe, threads mostly count in their own.
const STRIPES: usize = 8;

/// `Bearer <token>`, marked sensitive, built once per token and cloned per request.
#[derive(Clone)]
pub(crate) struct Authorization(Arc<[HeaderValue]>);

impl Authorization {
    pub(crate) fn new(mut value: HeaderValue) -> Self {
        value.set_sensitive(true);
        let copies = (1..STRIPES).map(|_| {
            let bytes = Bytes::copy_from_slice(value.as_bytes());
            let mut copy =
                HeaderValue::from_maybe_shared(bytes).expect("copied from a valid header value");
            copy.set_sensitive(true);
            copy
        });
        Authorization(std::iter::once(value.clone()).chain(copies).collect())
    }

    /// This thread's copy.
    #[inline]
    pub(crate) fn get(&self) -> HeaderValue {
        self.0[stripe()].clone()
    }
}

impl fmt::Debug for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Bearer [redacted]")
    }
}

/// The stripe of the current thread, handed out in turn as threads first ask.
#[inline]
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|stripe| match stripe.get() {
        usize::MAX => {
            let assigned = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            stripe.set(assigned);
            assigned
        }
        assigned => assigned,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_copy_is_the_same_sensitive_value_in_its_own_bytes() {
        let authorization = Authorization::new(HeaderValue::from_static("Bearer at-1"));
        assert_eq!(authorization.0.len(), STRIPES);
        let first = authorization.0[0].as_bytes().as_ptr();
        for (i, copy) in authorization.0.iter().enumerate() {
            assert_eq!(copy, "Bearer at-1");
            assert!(copy.is_sensitive());
            assert_eq!(i == 0, copy.as_bytes().as_ptr() == first);
        }
        assert_eq!(authorization.get(), "Bearer at-1");
        assert!(authorization.get().is_sensitive());
    }

    #[test]
    fn threads_take_stripes_in_turn() {
        let stripes: Vec<usize> = (0..STRIPES)
            .map(|_| std::thread::spawn(stripe).join().unwrap())
            .collect();
        // Other tests take stripes too, so the turns may start anywhere; a thread keeps its own.
        assert_eq!(stripe(), stripe());
        let mut distinct = stripes.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 1, "{stripes:?}");
    }
}
