//! Configuration: layering (defaults < file < environment < flags), defaults that agree with the
//! services script, and validation that reports every problem at once.

use std::collections::HashMap;

use fleet_core::FleetConfig;
use fleet_core::config::{ConfigError, ConfigSources};

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[test]
fn config_layers_defaults_file_env_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.toml");
    std::fs::write(
        &file,
        r#"
[redis]
url = "redis://from-file:6379/0"
key_prefix = "file-prefix"

[rabbitmq]
delivery_limit = 5

[[http.api_keys]]
key = "file-key-123"
tenant = "alice"
"#,
    )
    .unwrap();
    let sources = ConfigSources {
        file: Some(file),
        env: env(&[
            ("FLEET__REDIS__KEY_PREFIX", "env-prefix"),
            ("FLEET__WORKER__MAX_BATCH_IMAGES", "4"),
            ("FLEET__WORKER__PNG_COMPRESSION", "balanced"),
            ("FLEET__S3__PATH_STYLE", "false"),
            ("FLEET_API_KEYS", "env-key-456=bob:admin"),
            ("UNRELATED", "x"),
        ]),
        overrides: vec!["redis.url=redis://from-flag:6379/1".into()],
    };
    let cfg = FleetConfig::load(&sources).unwrap();
    assert_eq!(cfg.redis.url, "redis://from-flag:6379/1", "flags beat file");
    assert_eq!(cfg.redis.key_prefix, "env-prefix", "env beats file");
    assert_eq!(cfg.rabbitmq.delivery_limit, 5, "file beats defaults");
    assert_eq!(cfg.worker.max_batch_images, 4);
    assert_eq!(cfg.worker.png_compression, fleet_core::config::PngCompression::Balanced);
    assert_eq!(FleetConfig::default().worker.png_compression, fleet_core::config::PngCompression::Fast);
    assert!(!cfg.s3.path_style);
    assert_eq!(cfg.rabbitmq.exchange, "fleet.jobs", "defaults fill the rest");
    let tenants: Vec<_> = cfg.http.api_keys.iter().map(|k| (k.tenant.as_str(), k.admin)).collect();
    assert_eq!(tenants, [("alice", false), ("bob", true)]);
}

#[test]
fn config_errors_name_the_key() {
    let sources = ConfigSources {
        env: env(&[("FLEET__REDIS__URL", "http://wrong"), ("FLEET__HTTP__LISTEN", "nowhere")]),
        ..ConfigSources::default()
    };
    let message = FleetConfig::load(&sources).unwrap_err().to_string();
    assert!(message.contains("redis.url"), "{message}");
    assert!(message.contains("http.listen"), "{message}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.toml");
    std::fs::write(&file, "[redis]\nurll = \"redis://x\"\n").unwrap();
    let err = FleetConfig::from_file(&file).unwrap_err();
    assert!(matches!(err, ConfigError::Invalid(_)));
    assert!(err.to_string().contains("urll"), "{err}");

    std::fs::write(&file, "[worker]\npng_compression = \"turbo\"\n").unwrap();
    let err = FleetConfig::from_file(&file).unwrap_err().to_string();
    assert!(err.contains("turbo") && err.contains("png_compression"), "{err}");

    let missing = FleetConfig::from_file(std::path::Path::new("/nonexistent/fleet.toml")).unwrap_err();
    assert!(missing.to_string().contains("fleet.toml"), "{missing}");
}

#[test]
fn lora_fetch_keys_layer_and_are_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.toml");
    std::fs::write(&file, "[worker.lora_fetch]\ncache_dir = \"/var/cache/loras\"\ntimeout_secs = 60\n").unwrap();
    let sources = ConfigSources {
        file: Some(file.clone()),
        env: env(&[
            ("FLEET__WORKER__LORA_FETCH__ALLOWED_HOSTS", "cdn.example.com, *.hf.co"),
            ("FLEET__WORKER__LORA_FETCH__TIMEOUT_SECS", "90"),
        ]),
        overrides: vec!["worker.lora_fetch.allowed_private=10.1.0.0/16,127.0.0.1".into()],
    };
    let cfg = FleetConfig::load(&sources).unwrap();
    let fetch = &cfg.worker.lora_fetch;
    assert_eq!(fetch.cache_dir, std::path::Path::new("/var/cache/loras"));
    assert_eq!(fetch.timeout_secs, 90, "env beats file");
    assert_eq!(fetch.allowed_hosts, ["cdn.example.com", "*.hf.co"]);
    assert_eq!(fetch.allowed_private, ["10.1.0.0/16", "127.0.0.1"]);
    assert!(!fetch.allow_http && fetch.max_redirects == 0 && fetch.allowed_buckets.is_empty(), "defaults: {fetch:?}");

    let bad = ConfigSources {
        file: Some(file),
        overrides: vec![
            "worker.lora_fetch.allowed_private=10.0.0.0/33".into(),
            "worker.lora_fetch.max_file_bytes=100".into(),
            "worker.lora_fetch.cache_max_bytes=10".into(),
            "worker.lora_fetch.allowed_hosts=https://cdn.example.com/".into(),
        ],
        ..ConfigSources::default()
    };
    let message = FleetConfig::load(&bad).unwrap_err().to_string();
    for key in ["allowed_private[0] `10.0.0.0/33`", "cache_max_bytes", "allowed_hosts[0]"] {
        assert!(message.contains(&format!("worker.lora_fetch.{key}")), "{key}: {message}");
    }
}

#[test]
fn example_config_file_loads_and_masks_secrets() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fleet.example.toml");
    let cfg = FleetConfig::from_file(&path).unwrap();
    let masked = cfg.masked();
    assert!(!masked.rabbitmq.url.contains("guest@"), "{}", masked.rabbitmq.url);
    for key in &masked.http.api_keys {
        assert!(key.key.ends_with("***"));
    }
}

#[test]
fn a_models_table_replaces_the_built_in_models() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.toml");
    std::fs::write(&file, "[models.sdxl-lightning-2step]\nsource = \"ByteDance/SDXL-Lightning\"\n").unwrap();
    let cfg = FleetConfig::from_file(&file).unwrap();
    assert_eq!(cfg.models.keys().map(String::as_str).collect::<Vec<_>>(), ["sdxl-lightning-2step"]);
    let from_env = FleetConfig::load(&ConfigSources {
        env: env(&[("FLEET__MODELS__ONLY__SOURCE", "tiny")]),
        ..ConfigSources::default()
    })
    .unwrap();
    assert_eq!(from_env.models.keys().map(String::as_str).collect::<Vec<_>>(), ["only"]);
    let builtin = FleetConfig::load(&ConfigSources::default()).unwrap();
    assert_eq!(builtin.models, FleetConfig::default().models, "no [models]: the built-in ones");
}

#[test]
fn local_s3_keys_fill_in_only_for_the_local_endpoint() {
    use fleet_core::config::{LOCAL_S3_ACCESS_KEY, LOCAL_S3_ENDPOINT, LOCAL_S3_SECRET_KEY};
    let plain = FleetConfig::load(&ConfigSources::default()).unwrap();
    assert_eq!(plain.s3, FleetConfig::default().s3, "no layers: the built-in defaults");
    assert_eq!(plain.s3.endpoint, LOCAL_S3_ENDPOINT);
    assert_eq!(
        (plain.s3.access_key_id.as_str(), plain.s3.secret_access_key.as_str()),
        (LOCAL_S3_ACCESS_KEY, LOCAL_S3_SECRET_KEY)
    );

    let wrong_secret = FleetConfig::load(&ConfigSources {
        overrides: vec!["s3.secret_access_key=wrong".into()],
        ..ConfigSources::default()
    })
    .unwrap();
    assert_eq!(
        (wrong_secret.s3.access_key_id.as_str(), wrong_secret.s3.secret_access_key.as_str()),
        (LOCAL_S3_ACCESS_KEY, "wrong")
    );

    let aws = FleetConfig::load(&ConfigSources { overrides: vec!["s3.endpoint=".into()], ..ConfigSources::default() })
        .unwrap();
    assert_eq!((aws.s3.access_key_id.as_str(), aws.s3.secret_access_key.as_str()), ("", ""), "AWS: the standard chain");

    let minio = FleetConfig::load(&ConfigSources {
        env: env(&[
            ("FLEET__S3__ENDPOINT", "http://minio:9000"),
            ("FLEET__S3__ACCESS_KEY_ID", "minio-user"),
            ("FLEET__S3__SECRET_ACCESS_KEY", "minio-secret"),
        ]),
        ..ConfigSources::default()
    })
    .unwrap();
    assert_eq!((minio.s3.access_key_id.as_str(), minio.s3.secret_access_key.as_str()), ("minio-user", "minio-secret"));
}

/// `scripts/services.sh` creates the bucket and keys the configuration defaults to, so a dispatcher
/// and a worker with no configuration file work against it.
#[test]
fn services_script_matches_the_s3_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/services.sh");
    let script = std::fs::read_to_string(&path).unwrap();
    let value = |name: &str| {
        script
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name}= not in {}", path.display()))
            .to_owned()
    };
    let s3 = FleetConfig::default().s3;
    assert_eq!(value("S3_BUCKET"), s3.bucket);
    assert_eq!(value("S3_ACCESS_KEY"), s3.access_key_id);
    assert_eq!(value("S3_SECRET_KEY"), s3.secret_access_key);
    let port = value("S3_PORT");
    assert_eq!(port, "${FLEET_TEST_S3_PORT:-8333}");
    assert_eq!(s3.endpoint, "http://127.0.0.1:8333");
}

/// One load reports every bad value: wrong types, negative numbers, names outside an enum, and
/// values out of range, from any layer, each with its key.
#[test]
fn every_problem_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.toml");
    std::fs::write(
        &file,
        r#"
[worker]
device = "gpu"
max_batch_images = -2
png_compression = "turbo"

[models.tiny]
max_side = -64

[s3]
presign_ttl_secs = 0
"#,
    )
    .unwrap();
    let sources = ConfigSources {
        file: Some(file),
        env: env(&[("FLEET__REDIS__HEARTBEAT_TTL_SECS", "-30"), ("FLEET__HTTP__LISTEN", "nowhere")]),
        overrides: vec!["rabbitmq.delivery_limit=many".into()],
    };
    let err = FleetConfig::load(&sources).unwrap_err();
    let ConfigError::Invalid(problems) = &err else { panic!("not a list of problems: {err}") };
    let message = err.to_string();
    for key in [
        "worker.device",
        "worker.max_batch_images",
        "worker.png_compression",
        "models.tiny.max_side",
        "s3.presign_ttl_secs",
        "redis.heartbeat_ttl_secs",
        "http.listen",
        "rabbitmq.delivery_limit",
    ] {
        assert!(problems.iter().any(|p| p.contains(key)), "{key} missing from:\n{message}");
    }
    assert!(message.contains("gpu") && message.contains("turbo"), "{message}");
}

#[test]
fn broker_urls_come_from_a_list_a_comma_separated_string_or_the_one_url() {
    let one = FleetConfig::load(&ConfigSources::default()).unwrap();
    assert_eq!(one.rabbitmq.broker_urls(), std::slice::from_ref(&one.rabbitmq.url), "no urls: the one url");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.toml");
    std::fs::write(
        &file,
        "[rabbitmq]\nurls = [\"amqp://u:p@r1:5672/%2f\", \"amqp://u:p@r2:5672/%2f\"]\nquorum_initial_group_size = 3\n",
    )
    .unwrap();
    let listed = FleetConfig::from_file(&file).unwrap();
    assert_eq!(listed.rabbitmq.broker_urls(), ["amqp://u:p@r1:5672/%2f", "amqp://u:p@r2:5672/%2f"]);
    assert_eq!(listed.rabbitmq.quorum_initial_group_size, Some(3));
    assert!(listed.masked().rabbitmq.urls.iter().all(|u| u.contains("u:***@")), "{:?}", listed.masked());

    let from_env = FleetConfig::load(&ConfigSources {
        env: env(&[("FLEET__RABBITMQ__URLS", "amqp://r1:5672, amqp://r2:5672,amqp://r3:5672")]),
        ..ConfigSources::default()
    })
    .unwrap();
    assert_eq!(from_env.rabbitmq.broker_urls(), ["amqp://r1:5672", "amqp://r2:5672", "amqp://r3:5672"]);
    let from_flag = FleetConfig::load(&ConfigSources {
        overrides: vec!["rabbitmq.urls=amqp://r1,amqp://r2".into()],
        ..ConfigSources::default()
    })
    .unwrap();
    assert_eq!(from_flag.rabbitmq.broker_urls(), ["amqp://r1", "amqp://r2"]);
}

#[test]
fn every_broker_url_is_checked_at_load() {
    let sources = ConfigSources {
        env: env(&[
            ("FLEET__RABBITMQ__URLS", "amqp://r1:5672,http://u:hidden@r2,amqp://r3:port,amqp://r1:5672"),
            ("FLEET__RABBITMQ__QUORUM_INITIAL_GROUP_SIZE", "0"),
        ]),
        ..ConfigSources::default()
    };
    let message = FleetConfig::load(&sources).unwrap_err().to_string();
    for expected in [
        "rabbitmq.urls[1] `http://u:***@r2`: must start with amqp://",
        "rabbitmq.urls[2] `amqp://r3:port`: the port must be a number",
        "rabbitmq.urls[3] `amqp://r1:5672`: listed twice",
        "rabbitmq.quorum_initial_group_size: must be at least 1",
    ] {
        assert!(message.contains(expected), "{expected} in {message}");
    }
    assert!(!message.contains("hidden"), "{message}");

    let no_broker =
        FleetConfig::load(&ConfigSources { overrides: vec!["rabbitmq.url=".into()], ..ConfigSources::default() })
            .unwrap_err()
            .to_string();
    assert!(no_broker.contains("rabbitmq.url, rabbitmq.urls: no broker address given"), "{no_broker}");
}

#[test]
fn tenant_quotas_load_from_file_and_env_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.toml");
    std::fs::write(
        &file,
        "[tenants.default.quota]\nmax_queued_jobs = 100\n[tenants.acme.quota]\ndaily_megapixel_steps = 2.5\n",
    )
    .unwrap();
    let cfg = FleetConfig::load(&ConfigSources {
        file: Some(file.clone()),
        env: env(&[("FLEET__TENANTS__ACME__QUOTA__MAX_QUEUED_JOBS", "7")]),
        ..ConfigSources::default()
    })
    .unwrap();
    let acme = &cfg.tenants.settings("acme").quota;
    assert_eq!((acme.daily_pixel_steps(), acme.max_queued_jobs), (Some(2_500_000), Some(7)));
    // A tenant without an entry gets `[tenants.default]`'s.
    assert_eq!(cfg.tenants.settings("other").quota.max_queued_jobs, Some(100));
    assert_eq!(cfg.tenants.settings("other").quota.daily_megapixel_steps, None);

    std::fs::write(&file, "[tenants.acme.quota]\ndaily_megapixel_steps = -1\nmax_queued_jobs = 0\n").unwrap();
    let message = FleetConfig::from_file(&file).unwrap_err().to_string();
    for key in ["tenants.acme.quota.daily_megapixel_steps", "tenants.acme.quota.max_queued_jobs"] {
        assert!(message.contains(key), "{key} missing from: {message}");
    }
    std::fs::write(&file, "[tenants.acme.quota]\nmax_jobs = 3\n").unwrap();
    let message = FleetConfig::from_file(&file).unwrap_err().to_string();
    assert!(message.contains("max_jobs"), "{message}");
}

#[test]
fn a_tenants_webhook_secret_comes_from_the_environment_and_never_shows() {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    // How the Helm chart hands a tenant's secret to the dispatchers.
    let cfg = FleetConfig::load(&ConfigSources {
        env: env(&[("FLEET__TENANTS__ACME__WEBHOOKS__SECRET", SECRET), ("FLEET__WEBHOOKS__ENABLED", "true")]),
        ..ConfigSources::default()
    })
    .unwrap();
    assert!(cfg.webhooks.enabled);
    assert_eq!(cfg.tenants.settings("acme").webhooks.secret, SECRET);
    assert_eq!(cfg.tenants.settings("acme").webhooks.key().map(|k| k.len()), Some(24));
    let shown = format!("{:?} {}", cfg, serde_json::to_string(&cfg.masked()).unwrap());
    assert!(!shown.contains("MfKQ9r8G"), "{shown}");

    let bad = ConfigSources {
        overrides: vec![
            "tenants.acme.webhooks.secret=whsec_c2hvcnQ=".into(),
            "tenants.acme.webhooks.url=ftp://x/".into(),
            "webhooks.allowed_private=10.0.0.0/33".into(),
            "webhooks.timeout_secs=0".into(),
        ],
        ..ConfigSources::default()
    };
    let message = FleetConfig::load(&bad).unwrap_err().to_string();
    for key in [
        "tenants.acme.webhooks.secret: must encode 24 to 64 bytes",
        "tenants.acme.webhooks.url",
        "webhooks.allowed_private[0]",
        "webhooks.timeout_secs",
    ] {
        assert!(message.contains(key), "{key}: {message}");
    }
    assert!(!message.contains("c2hvcnQ"), "{message}");
}
