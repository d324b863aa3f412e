//! S3's endpoint rules, evaluated once per bucket instead of twice per request.
//!
//! aws-sdk-s3 evaluates its endpoint rule set (parsing the endpoint URL, IDNA, regexes over the
//! bucket name, then building the endpoint and its auth-scheme properties) for every request, and
//! again when it picks the auth scheme: ≈ 3 % of the fleet's CPU per job in the overhead
//! benchmark's profile (docs/PERFORMANCE.md). For one client the answer depends only on
//! the request's [`Params`], and of those the rules never read the object key (aws-sdk-s3 1.122:
//! the generated resolver binds `key` and leaves it unused), so requests that differ only in their
//! key share one answer.

use std::sync::Mutex;

use aws_sdk_s3::config::endpoint::{Endpoint, EndpointFuture, Params, ResolveEndpoint};

/// Answers kept at most (oldest dropped first): a store talks to one bucket.
const CAPACITY: usize = 8;

/// The fields of [`Params`] that [`same_but_key`] compares: all of them but `key`. The
/// `compares_every_field_but_key` test fails when an SDK update adds one.
#[cfg(test)]
const COMPARED: [&str; 16] = [
    "bucket",
    "region",
    "use_fips",
    "use_dual_stack",
    "endpoint",
    "force_path_style",
    "accelerate",
    "use_global_endpoint",
    "use_object_lambda_endpoint",
    "prefix",
    "copy_source",
    "disable_access_points",
    "disable_multi_region_access_points",
    "use_arn_region",
    "use_s3_express_control_endpoint",
    "disable_s3_express_session_auth",
];

/// An endpoint resolver that asks `rules` once per distinct set of parameters (keys aside).
#[derive(Debug)]
pub(crate) struct EndpointMemo<R> {
    rules: R,
    answers: Mutex<Vec<(Params, Endpoint)>>,
}

impl<R> EndpointMemo<R> {
    pub(crate) fn new(rules: R) -> Self {
        EndpointMemo { rules, answers: Mutex::new(Vec::with_capacity(CAPACITY)) }
    }

    fn recall(&self, params: &Params) -> Option<Endpoint> {
        // A poisoned lock only means a panic elsewhere while copying an answer: ask the rules.
        let answers = self.answers.lock().ok()?;
        answers.iter().find(|(known, _)| same_but_key(known, params)).map(|(_, endpoint)| endpoint.clone())
    }

    fn remember(&self, params: &Params, endpoint: &Endpoint) {
        if let Ok(mut answers) = self.answers.lock() {
            if answers.iter().any(|(known, _)| same_but_key(known, params)) {
                return;
            }
            if answers.len() >= CAPACITY {
                answers.remove(0);
            }
            answers.push((params.clone(), endpoint.clone()));
        }
    }
}

impl<R: ResolveEndpoint> ResolveEndpoint for EndpointMemo<R> {
    fn resolve_endpoint<'a>(&'a self, params: &'a Params) -> EndpointFuture<'a> {
        if let Some(endpoint) = self.recall(params) {
            return EndpointFuture::ready(Ok(endpoint));
        }
        EndpointFuture::new(async move {
            // Failures are not remembered: the next request asks again and gets its own error.
            let endpoint = self.rules.resolve_endpoint(params).await?;
            self.remember(params, &endpoint);
            Ok(endpoint)
        })
    }
}

fn same_but_key(a: &Params, b: &Params) -> bool {
    a.bucket() == b.bucket()
        && a.region() == b.region()
        && a.use_fips() == b.use_fips()
        && a.use_dual_stack() == b.use_dual_stack()
        && a.endpoint() == b.endpoint()
        && a.force_path_style() == b.force_path_style()
        && a.accelerate() == b.accelerate()
        && a.use_global_endpoint() == b.use_global_endpoint()
        && a.use_object_lambda_endpoint() == b.use_object_lambda_endpoint()
        && a.prefix() == b.prefix()
        && a.copy_source() == b.copy_source()
        && a.disable_access_points() == b.disable_access_points()
        && a.disable_multi_region_access_points() == b.disable_multi_region_access_points()
        && a.use_arn_region() == b.use_arn_region()
        && a.use_s3_express_control_endpoint() == b.use_s3_express_control_endpoint()
        && a.disable_s3_express_session_auth() == b.disable_s3_express_session_auth()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use aws_sdk_s3::config::endpoint::DefaultResolver;

    use super::*;

    /// The SDK's rules, counting how often they are asked.
    #[derive(Debug)]
    struct CountedRules {
        rules: DefaultResolver,
        asked: AtomicUsize,
    }

    impl CountedRules {
        fn new() -> Self {
            // `new`, not `Default`: the derived default has no partitions and resolves nothing.
            CountedRules { rules: DefaultResolver::new(), asked: AtomicUsize::new(0) }
        }
    }

    impl ResolveEndpoint for CountedRules {
        fn resolve_endpoint<'a>(&'a self, params: &'a Params) -> EndpointFuture<'a> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            self.rules.resolve_endpoint(params)
        }
    }

    fn params(endpoint: Option<&str>, bucket: &str, key: &str, path_style: bool) -> Params {
        Params::builder()
            .region("us-east-1")
            .set_endpoint(endpoint.map(str::to_owned))
            .bucket(bucket)
            .key(key)
            .force_path_style(path_style)
            .build()
            .expect("endpoint params")
    }

    async fn resolve(resolver: &impl ResolveEndpoint, params: &Params) -> Endpoint {
        resolver.resolve_endpoint(params).await.expect("resolved")
    }

    #[tokio::test]
    async fn answers_as_the_rules_do_and_asks_them_once_per_bucket() {
        let memo = EndpointMemo::new(CountedRules::new());
        let sdk = DefaultResolver::new();
        let local = Some("http://127.0.0.1:8333");
        let cases = [
            (params(local, "images", "a/1.png", true), 1),
            (params(local, "images", "b/2.png", true), 1),
            (params(local, "other", "a/1.png", true), 2),
            (params(local, "images", "c/3.png", false), 3),
            (params(None, "images", "a/1.png", false), 4),
            (params(None, "images", "z/9.png", false), 4),
            (params(local, "images", "d/4.png", true), 4),
        ];
        for (p, asked) in &cases {
            assert_eq!(resolve(&memo, p).await, resolve(&sdk, p).await, "{p:?}");
            assert_eq!(memo.rules.asked.load(Ordering::SeqCst), *asked, "{p:?}");
        }
        let path_style = resolve(&memo, &cases[0].0).await;
        assert_eq!(path_style.url(), "http://127.0.0.1:8333/images");
    }

    #[tokio::test]
    async fn keeps_a_bounded_number_of_answers() {
        let memo = EndpointMemo::new(CountedRules::new());
        for i in 0..CAPACITY + 3 {
            resolve(&memo, &params(Some("http://127.0.0.1:8333"), &format!("bucket-{i}"), "k", true)).await;
        }
        assert_eq!(memo.answers.lock().unwrap().len(), CAPACITY);
        // the oldest went first
        resolve(&memo, &params(Some("http://127.0.0.1:8333"), "bucket-0", "k", true)).await;
        assert_eq!(memo.rules.asked.load(Ordering::SeqCst), CAPACITY + 4);
    }

    #[test]
    fn compares_every_field_but_key() {
        // `Params`'s Debug is derived, so it names every field the SDK version has.
        let shown = format!("{:?}", Params::builder().build().expect("default params"));
        let inner = shown.trim_start_matches("Params {").trim_end_matches('}');
        let mut fields: Vec<&str> =
            inner.split(", ").filter_map(|f| f.split(':').next()).map(str::trim).filter(|f| !f.is_empty()).collect();
        fields.sort_unstable();
        let mut expected: Vec<&str> = COMPARED.iter().copied().chain(["key"]).collect();
        expected.sort_unstable();
        assert_eq!(fields, expected, "aws-sdk-s3's endpoint Params changed: update same_but_key and COMPARED");
    }
}
