//! With feature `metrics` off, a refresh, a refused refresh and a resend record nothing, even
//! with a recorder installed: the crate does not link the `metrics` facade at all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use metrics_util::debugging::DebuggingRecorder;
use oauth_refresh::{
    BoxError, ReauthRequired, RefreshErrorKind, RefreshLayer, TokenRequest, TokenSet, source_fn,
};
use tower::{Layer, ServiceExt, service_fn};

#[tokio::test]
async fn without_the_feature_nothing_is_recorded() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder).expect("the only recorder of this process");

    // Token requests: a success, then a refusal (`invalid_grant`), each recorded by the
    // crate with the feature on.
    let calls = AtomicUsize::new(0);
    let calls = &*Box::leak(Box::new(calls));
    let layer =
        RefreshLayer::new(source_fn(move |_: TokenRequest| async move {
            match calls.fetch_add(1, Ordering::SeqCst) {
                n @ (0 | 1) => Ok(TokenSet::new(format!("at-{n}").into())
                    .with_expires_in(Duration::from_secs(3600))),
                _ => Err(ReauthRequired::new("invalid_grant").into()),
            }
        }));
    // An API that rejects its first request (a resend, recorded with the feature on).
    let answered = &*Box::leak(Box::new(AtomicUsize::new(0)));
    let api = service_fn(move |_: http::Request<String>| async move {
        let status = if answered.fetch_add(1, Ordering::SeqCst) == 0 {
            http::StatusCode::UNAUTHORIZED
        } else {
            http::StatusCode::OK
        };
        let mut response = http::Response::new(String::new());
        *response.status_mut() = status;
        if status == http::StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static(r#"Bearer error="invalid_token""#),
            );
        }
        Ok::<_, BoxError>(response)
    });
    let response = layer
        .layer(api)
        .oneshot(http::Request::new(String::new()))
        .await
        .expect("answered after one resend");
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(
        answered.load(Ordering::SeqCst),
        2,
        "the request was resent once"
    );
    layer.invalidate();
    let refused = layer
        .refresh()
        .await
        .expect_err("the third token request is refused");
    assert_eq!(refused.kind(), RefreshErrorKind::Reauth, "{refused}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // The recorder works: what this test records itself shows up.
    metrics::counter!("control_total").increment(1);
    let recorded: Vec<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, ..)| key.key().name().to_owned())
        .collect();
    assert_eq!(
        recorded,
        ["control_total"],
        "the crate recorded without the feature"
    );
}

/// Who depends on the facade, in both feature sets a user may pick without `metrics`: this
/// package and the recorder, never the crate.
#[test]
fn without_the_feature_the_facade_is_not_compiled_in() {
    for features in [&[][..], &["--features", "reqwest"][..]] {
        let tree = std::process::Command::new(env!("CARGO"))
            .args(["tree", "-e", "normal", "--prefix", "none", "-i", "metrics"])
            .args([
                "--manifest-path",
                concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
            ])
            .args(features)
            .output()
            .expect("cargo runs");
        assert!(
            tree.status.success(),
            "{}",
            String::from_utf8_lossy(&tree.stderr)
        );
        let tree = String::from_utf8(tree.stdout).unwrap();
        assert!(
            tree.lines().any(|line| line.starts_with("metrics-util ")),
            "{tree}"
        );
        assert!(
            !tree.lines().any(|line| line.starts_with("oauth-refresh ")),
            "{features:?}: the crate depends on the facade:\n{tree}"
        );
    }
}
