//! The node's HTTP side on 127.0.0.1 with an ephemeral port, spoken to with raw HTTP/1.1
//! (so no client library normalizes the paths a traversal test sends).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use kwaainet_p2p::NodeConfig;
use kwaainet_p2p::http::{HttpConfig, ModelFile};
use kwaainet_p2p::libp2p::identity::Keypair;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

async fn get(addr: std::net::SocketAddr, path: &str, extra: &str) -> Result<Reply> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("no header end")?;
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let status = head.split(' ').nth(1).context("no status")?.parse()?;
        let mut body = raw[split + 4..].to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body)?;
        }
        Ok(Reply { status, head, body })
    })
    .await
    .context("HTTP request timed out")?
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size")?;
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl])?.trim(), 16)?;
        b = &b[nl + 2..];
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..n).context("short chunk")?);
        b = b.get(n + 2..).context("chunk end")?;
    }
}

fn fixture(root: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let site = root.join("site");
    let cdn = root.join("cdn");
    std::fs::create_dir_all(site.join("sub"))?;
    std::fs::create_dir_all(cdn.join("v9.9.9"))?;
    std::fs::write(
        site.join("index.html"),
        r#"<script src="{{cdn}}distributed-ai.js" integrity="{{sri}}" data-model-url="{{modelUrl}}" data-model-sha256="{{modelSha256}}"></script>"#,
    )?;
    std::fs::write(site.join("serve.mjs"), "server code")?;
    std::fs::write(site.join("coverage.mjs"), "export const page = 1;")?;
    std::fs::create_dir_all(site.join("tests"))?;
    std::fs::write(site.join("tests/secret.txt"), "TOP-SECRET")?;
    std::fs::write(site.join("sub").join("engine.wasm"), b"\0asm\x01\0\0\0")?;
    std::fs::write(site.join("data.bin"), (0u8..=255).collect::<Vec<_>>())?;
    std::fs::write(root.join("secret.txt"), "TOP-SECRET")?;
    std::fs::write(cdn.join("v9.9.9").join("distributed-ai.js"), "/* bundle */")?;
    std::fs::write(
        cdn.join("v9.9.9").join("sri-manifest.json"),
        r#"{"files":{"distributed-ai.js":{"integrity":"sha384-abc"}}}"#,
    )?;
    let model = root.join("model.gguf");
    std::fs::write(&model, b"GGUF-model-bytes")?;
    Ok((site, cdn, model))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_metrics_and_static_files() -> Result<()> {
    let root = std::env::temp_dir().join(format!("kwaainet-http-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (site, cdn, model) = fixture(&root)?;

    let cfg = NodeConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        full: true,
        allow_local_addrs: true,
        autonat: false,
        ..NodeConfig::default()
    };
    let node = kwaainet_p2p::spawn(cfg, Keypair::generate_ed25519(), None).await?;
    let mut extra = prometheus_client::registry::Registry::default();
    let probe = prometheus_client::metrics::counter::Counter::<u64>::default();
    extra.register(
        "kwaainet_extra_probe",
        "A metric of another registry",
        probe.clone(),
    );
    probe.inc_by(3);
    let app = kwaainet_p2p::http::router(
        node.clone(),
        HttpConfig {
            site_dir: Some(site),
            cdn_dir: Some(cdn),
            model: Some(ModelFile {
                path: model,
                sha256: "ab12".into(),
            }),
            watch_models: vec![("nobody-serves-this@00".into(), Some(4))],
            registries: vec![std::sync::Arc::new(extra)],
            state_extras: vec![kwaainet_p2p::http::StateExtra::new(
                "owner_field",
                || serde_json::json!({ "computed": true }),
            )],
        },
    );
    let listener = kwaainet_p2p::http::bind("127.0.0.1:0".parse()?).await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(kwaainet_p2p::http::serve(listener, app, async {
        let _ = stop_rx.await;
    }));

    // State: a JSON document about this node.
    let r = get(addr, "/api/v1/state", "").await?;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
    );
    let st: serde_json::Value = serde_json::from_slice(&r.body)?;
    assert_eq!(st["peer_id"], node.peer_id().to_string());
    assert_eq!(st["kad_mode"], "server");
    assert!(st["listen_addrs"].as_array().is_some_and(|a| !a.is_empty()));
    assert!(st["uptime_secs"].is_u64());
    assert_eq!(
        st["owner_field"]["computed"], true,
        "a field its owner computes"
    );
    // The same document reads back as the node's own type (as `kwaainet status` reads it).
    let typed: kwaainet_p2p::NodeState = serde_json::from_slice(&r.body)?;
    // The swarm's health of the watched model: nobody serves it, so no block is covered.
    let mut report = serde_json::Value::Null;
    for _ in 0..100 {
        let r = get(addr, "/api/v1/state", "").await?;
        let st: serde_json::Value = serde_json::from_slice(&r.body)?;
        if let Some(m) = st["models"].as_array().and_then(|m| m.first()) {
            report = m.clone();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(report["model"], "nobody-serves-this@00", "{report}");
    assert_eq!(report["blocks"], 4);
    assert_eq!(report["coverage"], serde_json::json!([0, 0, 0, 0]));
    assert_eq!(report["complete"], false);
    assert_eq!(report["servers"], serde_json::json!([]));
    assert_eq!(typed.peer_id, node.peer_id());
    assert_eq!(typed.kad_mode, kwaainet_p2p::KadMode::Server);

    // Metrics: Prometheus text with libp2p's and ours.
    let r = get(addr, "/metrics", "").await?;
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body)?;
    assert!(text.contains("kwaainet_connected_peers"), "{text}");
    assert!(text.contains("libp2p_swarm"), "{text}");
    assert!(text.contains("libp2p_bandwidth"), "{text}");
    assert!(text.trim_end().ends_with("# EOF"));
    // Other registries (the OpenAI API's) follow the node's in the same exposition.
    assert!(text.contains("kwaainet_extra_probe_total 3"), "{text}");
    assert_eq!(text.matches("# EOF").count(), 1);

    // The page with its placeholders filled in.
    let r = get(addr, "/", "").await?;
    assert_eq!(r.status, 200);
    // Cross-origin isolated (the multi-threaded CPU engine needs shared memory).
    assert_eq!(r.header("cross-origin-opener-policy"), Some("same-origin"));
    assert_eq!(
        r.header("cross-origin-embedder-policy"),
        Some("require-corp")
    );
    let page = String::from_utf8(r.body)?;
    assert!(
        page.contains(r#"src="/cdn/v9.9.9/distributed-ai.js""#),
        "{page}"
    );
    assert!(page.contains(r#"integrity="sha384-abc""#));
    assert!(page.contains(r#"data-model-url="/models/model.gguf""#));
    assert!(page.contains(r#"data-model-sha256="ab12""#));

    // A placeholder the node has no value for: a clear error naming it, never a page with a
    // literal `{{…}}` in it; a placeholder with a default takes it.
    let index = root.join("site").join("index.html");
    std::fs::write(
        &index,
        r#"<p data-a="{{newThing}}" data-b="{{knob|x:1}}">{{cdn}}</p>"#,
    )?;
    let r = get(addr, "/", "").await?;
    assert_eq!(r.status, 503);
    let text = String::from_utf8(r.body)?;
    assert!(text.contains("no value for {{newThing}}"), "{text}");
    std::fs::write(&index, r#"<p data-b="{{knob|x:1}}">{{cdn}}</p>"#)?;
    let r = get(addr, "/", "").await?;
    assert_eq!(r.status, 200);
    assert_eq!(
        String::from_utf8(r.body)?,
        r#"<p data-b="x:1">/cdn/v9.9.9/</p>"#
    );

    // MIME types, CORS on the bundle, the model.
    let r = get(addr, "/sub/engine.wasm", "").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/wasm"));
    let r = get(addr, "/cdn/v9.9.9/distributed-ai.js", "").await?;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.contains("javascript"))
    );
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        r.header("cross-origin-resource-policy"),
        Some("cross-origin")
    );
    assert_eq!(
        r.header("cross-origin-embedder-policy"),
        Some("require-corp")
    );
    let r = get(addr, "/models/model.gguf", "").await?;
    assert_eq!(r.body, b"GGUF-model-bytes");

    // Range requests.
    let r = get(addr, "/data.bin", "Range: bytes=10-19\r\n").await?;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, (10u8..=19).collect::<Vec<_>>());
    assert_eq!(r.header("content-range"), Some("bytes 10-19/256"));
    let r = get(addr, "/models/model.gguf", "Range: bytes=0-3\r\n").await?;
    assert_eq!((r.status, r.body.as_slice()), (206, &b"GGUF"[..]));
    let r = get(addr, "/data.bin", "Range: bytes=300-400\r\n").await?;
    assert_eq!(r.status, 416);

    // No way out of the served folders, and the demo's server code is not served.
    for path in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/sub/..%2f..%2fsecret.txt",
        "/cdn/../secret.txt",
        "/cdn/%2e%2e/secret.txt",
        "/..%5csecret.txt",
        "/serve.mjs",
        "/tests/secret.txt",
    ] {
        let r = get(addr, path, "").await?;
        assert!(r.status >= 400, "{path}: {}", r.status);
        assert!(
            !String::from_utf8_lossy(&r.body).contains("TOP-SECRET"),
            "{path}"
        );
        assert!(
            !String::from_utf8_lossy(&r.body).contains("server code"),
            "{path}"
        );
    }
    // A module the page imports is a page asset.
    let r = get(addr, "/coverage.mjs", "").await?;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.contains("javascript")),
        "{:?}",
        r.header("content-type")
    );
    let r = get(addr, "/missing.js", "").await?;
    assert_eq!(r.status, 404);

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), server).await???;
    node.shutdown().await;
    std::fs::remove_dir_all(&root)?;
    Ok(())
}
