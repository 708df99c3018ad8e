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
pub(crate) enum Authorization {
    /// One copy per stripe of threads: for a token that every thread uses.
    Striped(Arc<[HeaderValue]>),
    /// One copy, in the token itself: for one of a keyed layer's many tokens, where the
    /// request's cost is the cache lines it reads, and the copies would take memory per key.
    One(HeaderValue),
}

/// How many copies of its header a token cell keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Copies {
    PerStripe,
    One,
}

impl Authorization {
    /// The header as a cell keeping `copies` of it holds it.
    pub(crate) fn with_copies(mut value: HeaderValue, copies: Copies) -> Self {
        match copies {
            Copies::PerStripe => Self::new(value),
            Copies::One => {
                value.set_sensitive(true);
                Authorization::One(value)
            }
        }
    }

    pub(crate) fn new(mut value: HeaderValue) -> Self {
        value.set_sensitive(true);
        let copies = (1..STRIPES).map(|_| {
            let bytes = Bytes::copy_from_slice(value.as_bytes());
            let mut copy =
                HeaderValue::from_maybe_shared(bytes).expect("copied from a valid header value");
            copy.set_sensitive(true);
            copy
        });
        Authorization::Striped(std::iter::once(value.clone()).chain(copies).collect())
    }

    /// The access token this header carries, for code off the request path (a sign-out's
    /// revocation, a token exchange's subject): read back from the header rather than kept
    /// beside it, which would cost every cell of a keyed layer a second copy of its token.
    pub(crate) fn access_token(&self) -> crate::token::AccessToken {
        let header = self.get();
        // Built from `Bearer <token>`, a `String`: UTF-8, and the scheme ends at the space.
        let value = String::from_utf8_lossy(header.as_bytes());
        let token = value
            .split_once(' ')
            .map_or(&*value, |(_scheme, token)| token);
        crate::token::AccessToken::new(token)
    }

    /// This thread's copy.
    #[inline]
    pub(crate) fn get(&self) -> HeaderValue {
        match self {
            Authorization::Striped(copies) => copies[stripe()].clone(),
            Authorization::One(value) => value.clone(),
        }
    }
}

impl fmt::Debug for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The scheme (`Bearer`, `DPoP`) is not a secret; the token after it is.
        let header = self.get();
        let scheme = header
            .as_bytes()
            .split(|b| *b == b' ')
            .next()
            .unwrap_or_default();
        write!(f, "{} [redacted]", String::from_utf8_lossy(scheme))
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
        let Authorization::Striped(copies) = &authorization else {
            panic!("striped");
        };
        assert_eq!(copies.len(), STRIPES);
        let first = copies[0].as_bytes().as_ptr();
        for (i, copy) in copies.iter().enumerate() {
            assert_eq!(copy, "Bearer at-1");
            assert!(copy.is_sensitive());
            assert_eq!(i == 0, copy.as_bytes().as_ptr() == first);
        }
        assert_eq!(authorization.get(), "Bearer at-1");
        assert!(authorization.get().is_sensitive());
        assert_eq!(format!("{authorization:?}"), "Bearer [redacted]");
        let bound = Authorization::new(HeaderValue::from_static("DPoP at-1"));
        assert_eq!(format!("{bound:?}"), "DPoP [redacted]");
        let one = Authorization::with_copies(HeaderValue::from_static("Bearer at-1"), Copies::One);
        assert_eq!(one.get(), "Bearer at-1");
        assert!(one.get().is_sensitive());
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
