//! Where a grant gets a credential it presents in its form: a token exchange's subject and
//! actor tokens, a JWT-bearer grant's assertion. Obtained afresh for every token request,
//! never cached here, and never printed.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::BoxError;
use crate::error::{ConfigurationError, ReauthRequired, RefreshError, TransientError};
use crate::source::BoxFuture;

type SupplyFn = dyn Fn() -> BoxFuture<'static, Result<String, BoxError>> + Send + Sync;

/// What a credential is called in messages, and the code of the error when it cannot be had.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Input {
    /// "the subject token", "the assertion".
    pub(crate) name: &'static str,
    /// The [`ConfigurationError`] code when it cannot be obtained, e.g. `"subject_token_unavailable"`.
    pub(crate) code: &'static str,
}

/// A closure or a file: the two ways a credential comes from outside the crate.
#[derive(Clone)]
pub(crate) enum Supply {
    Fn(Arc<SupplyFn>),
    /// Re-read for every request: a projected Kubernetes service-account token, a cloud's
    /// identity token, rotated on disk by someone else.
    File(Arc<Path>),
}

impl Supply {
    pub(crate) fn from_fn<F, Fut, E>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        Supply::Fn(Arc::new(move || {
            let obtained = f();
            Box::pin(async move { obtained.await.map_err(Into::into) })
        }))
    }

    pub(crate) fn from_file(path: impl Into<PathBuf>) -> Self {
        Supply::File(Arc::from(path.into()))
    }

    /// The credential, now. An error of the crate's own types keeps its class; any other
    /// (a file that cannot be read, a closure's own error) is a local [`ConfigurationError`],
    /// which the cell retries after its cooldown: a file may yet appear.
    pub(crate) async fn obtain(&self, input: Input) -> Result<String, RefreshError> {
        let obtained = match self {
            Supply::Fn(f) => f().await.map_err(|error| classify(error, input)),
            Supply::File(path) => read_file(path.clone(), input).await,
        }?;
        // No credential holds surrounding whitespace (a file's is trimmed as it is read).
        let value = obtained.trim();
        if value.is_empty() {
            return Err(ConfigurationError::local(input.code)
                .with_description(format!("{} is empty", input.name))
                .into());
        }
        Ok(match value.len() == obtained.len() {
            true => obtained,
            false => value.to_owned(),
        })
    }
}

async fn read_file(path: Arc<Path>, input: Input) -> Result<String, RefreshError> {
    let name = format!("{} file", input.name);
    let read = tokio::task::spawn_blocking(move || read_credential_file(&path, &name, input.code));
    match read.await {
        Ok(read) => read,
        Err(_cancelled) => Err(
            TransientError::new(crate::error::TransientKind::RuntimeShutdown)
                .with_source(format!("{} was being read", input.name))
                .into(),
        ),
    }
}

/// The most a credential file may hold: assertions and tokens are a few kilobytes.
const MAX_CREDENTIAL_BYTES: u64 = 64 * 1024;

/// Reads a credential from the file at `path`, blocking: a client assertion, a subject token,
/// a workload's identity token, which someone else rotates on disk. Surrounding whitespace is
/// trimmed.
///
/// A file missing or empty is transient (resent with backoff): a rotation may be replacing it
/// this moment. One that cannot be read, is too large or is not UTF-8 is a
/// [`ConfigurationError`] `code`. Messages name `name` and the path, never the content.
pub(crate) fn read_credential_file(
    path: &Path,
    name: &str,
    code: &str,
) -> Result<String, RefreshError> {
    use std::io::Read;
    let shown = path.display();
    let unreadable = |reason: String| -> RefreshError {
        ConfigurationError::local(code)
            .with_description(format!("{name} {shown} {reason}"))
            .into()
    };
    let transient = |reason: &str| -> RefreshError {
        TransientError::new(crate::error::TransientKind::Credential)
            .with_source(format!("{name} {shown} {reason}"))
            .into()
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(transient("is missing"));
        }
        Err(error) => return Err(unreadable(format!("could not be opened: {error}"))),
    };
    let mut bytes = Vec::new();
    file.take(MAX_CREDENTIAL_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| unreadable(format!("could not be read: {error}")))?;
    if bytes.len() as u64 > MAX_CREDENTIAL_BYTES {
        return Err(unreadable(format!(
            "holds more than {} KiB",
            MAX_CREDENTIAL_BYTES / 1024
        )));
    }
    let Ok(text) = String::from_utf8(bytes) else {
        return Err(unreadable("is not UTF-8 text".into()));
    };
    let value = text.trim();
    if value.is_empty() {
        return Err(transient("is empty"));
    }
    Ok(value.to_owned())
}

/// A closure's error, in the class the crate's own error types say, or else a local
/// configuration error. Its message says which credential could not be obtained.
pub(crate) fn classify(error: BoxError, input: Input) -> RefreshError {
    let error = match error.downcast::<RefreshError>() {
        Ok(error) => return unavailable(*error, input),
        Err(error) => error,
    };
    let error = match error.downcast::<ReauthRequired>() {
        Ok(error) => return unavailable((*error).into(), input),
        Err(error) => error,
    };
    let error = match error.downcast::<TransientError>() {
        Ok(error) => return unavailable((*error).into(), input),
        Err(error) => error,
    };
    match error.downcast::<ConfigurationError>() {
        Ok(error) => unavailable((*error).into(), input),
        Err(error) => ConfigurationError::local(input.code)
            .with_description(format!("{} could not be obtained: {error}", input.name))
            .into(),
    }
}

/// A credential's source failed with `error`: the same class, saying which credential it was.
///
/// A [`ReauthRequired`] stays one (the subject must sign in again) with its code and host;
/// a [`TransientError`] keeps its kind and retry hint, and is not resent within this refresh:
/// the source has resent what it could itself, and the cell's cooldown asks it again later.
pub(crate) fn unavailable(error: RefreshError, input: Input) -> RefreshError {
    match error {
        RefreshError::Reauth(reauth) => {
            let description = match reauth.description() {
                Some(description) => format!("{} could not be obtained: {description}", input.name),
                None => format!("{} could not be obtained", input.name),
            };
            let mut error = ReauthRequired::new(reauth.error()).with_description(description);
            if let Some(uri) = reauth.uri() {
                error = error.with_uri(uri);
            }
            if let Some(host) = reauth.host() {
                error = error.with_host(host);
            }
            error.into()
        }
        RefreshError::Transient(transient) => {
            let mut error = TransientError::new(transient.kind()).with_resend_safe(false);
            if let Some(retry_after) = transient.retry_after() {
                error = error.with_retry_after(retry_after);
            }
            error
                .with_source(Unavailable {
                    name: input.name,
                    source: transient,
                })
                .into()
        }
        RefreshError::Configuration(configuration) => ConfigurationError::local(input.code)
            .with_description(format!(
                "{} could not be obtained: {configuration}",
                input.name
            ))
            .into(),
    }
}

/// "the subject token could not be obtained", caused by its source's own error.
#[derive(Debug)]
struct Unavailable {
    name: &'static str,
    source: TransientError,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} could not be obtained", self.name)
    }
}

impl Error for Unavailable {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.source)
    }
}

/// Names the kind, and a file's path; never the closure's captures or the value.
impl fmt::Debug for Supply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Supply::Fn(_) => f.write_str("Fn"),
            Supply::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{RefreshErrorKind, TransientKind};

    const SUBJECT: Input = Input {
        name: "the subject token",
        code: "subject_token_unavailable",
    };

    #[tokio::test]
    async fn errors_keep_their_class_and_name_the_credential() {
        let reauth = Supply::from_fn(|| async {
            Err::<String, _>(
                ReauthRequired::new("invalid_grant")
                    .with_description("revoked")
                    .with_host("login.example.com"),
            )
        });
        let RefreshError::Reauth(err) = reauth.obtain(SUBJECT).await.unwrap_err() else {
            panic!()
        };
        assert_eq!(err.error(), "invalid_grant");
        assert_eq!(err.host(), Some("login.example.com"));
        assert_eq!(
            err.description(),
            Some("the subject token could not be obtained: revoked")
        );

        let transient = Supply::from_fn(|| async {
            Err::<String, _>(RefreshError::from(TransientError::new(
                TransientKind::Network,
            )))
        });
        let RefreshError::Transient(err) = transient.obtain(SUBJECT).await.unwrap_err() else {
            panic!()
        };
        assert_eq!(err.kind(), TransientKind::Network);
        assert!(!err.is_resend_safe(), "the source resent what it could");
        assert_eq!(
            err.source().unwrap().to_string(),
            "the subject token could not be obtained"
        );

        let other = Supply::from_fn(|| async { Err::<String, _>(std::io::Error::other("boom")) });
        let err = other.obtain(SUBJECT).await.unwrap_err();
        assert_eq!(err.kind(), RefreshErrorKind::Configuration);
        assert!(
            err.to_string()
                .contains("the subject token could not be obtained: boom")
        );
    }

    #[tokio::test]
    async fn a_file_is_read_each_time_and_trimmed() {
        let dir = std::env::temp_dir().join(format!("oauth-refresh-supply-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "st-1\n").unwrap();
        let supply = Supply::from_file(&path);
        assert_eq!(supply.obtain(SUBJECT).await.unwrap(), "st-1");
        std::fs::write(&path, "st-2").unwrap();
        assert_eq!(supply.obtain(SUBJECT).await.unwrap(), "st-2");
        // Empty or missing: a rotation under way, transient.
        std::fs::write(&path, "  \n").unwrap();
        let RefreshError::Transient(empty) = supply.obtain(SUBJECT).await.unwrap_err() else {
            panic!("an empty file is transient")
        };
        let reason = empty.source().unwrap().to_string();
        assert!(reason.starts_with("the subject token file "), "{reason}");
        assert!(reason.ends_with(" is empty"), "{reason}");
        std::fs::remove_file(&path).unwrap();
        let RefreshError::Transient(missing) = supply.obtain(SUBJECT).await.unwrap_err() else {
            panic!("a missing file is transient")
        };
        assert_eq!(missing.kind(), TransientKind::Credential);
        // A directory in its place cannot be read: a configuration error.
        std::fs::create_dir_all(&path).unwrap();
        let RefreshError::Configuration(unreadable) = supply.obtain(SUBJECT).await.unwrap_err()
        else {
            panic!("a directory is not a credential")
        };
        assert_eq!(unreadable.error(), "subject_token_unavailable");
        assert!(format!("{supply:?}").starts_with("File("));
        std::fs::remove_dir_all(&dir).ok();
    }
}
