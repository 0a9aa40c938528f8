//! What the GPU tests share: one device context per test binary, engines on it, and the rule
//! for machines without an adapter.

use std::sync::OnceLock;

use gatematch::engine::gpu::{GpuContext, GpuEngine, GpuOptions, StorageFormat};

/// Set to 1 where an adapter must exist (CI, through scripts/test.sh): a missing adapter then
/// fails the test instead of skipping it.
pub const REQUIRE_GPU: &str = "GATEMATCH_REQUIRE_GPU";

/// Reports a missing adapter: a skip with the reason, or a failure where one is required.
pub fn no_adapter(reason: &str) {
    if std::env::var(REQUIRE_GPU).is_ok_and(|v| v == "1") {
        panic!("{REQUIRE_GPU}=1 but no GPU adapter could be opened: {reason}");
    }
    eprintln!("skipping GPU test: {reason}");
}

/// Sends the engine's logs (a failover's error, say) to the test's output.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("gatematch=debug")
        .with_test_writer()
        .try_init();
}

/// A new context of its own (for tests that destroy their device), or `None` after saying
/// why.
pub fn own_context() -> Option<GpuContext> {
    logs();
    match GpuContext::new(true) {
        Ok(ctx) => Some(ctx),
        Err(e) => {
            no_adapter(&e.to_string());
            None
        }
    }
}

/// The context shared by a test binary's tests, or `None` after saying why.
pub fn context() -> Option<&'static GpuContext> {
    static CONTEXT: OnceLock<Result<GpuContext, String>> = OnceLock::new();
    logs();
    match CONTEXT.get_or_init(|| GpuContext::new(true).map_err(|e| e.to_string())) {
        Ok(ctx) => Some(ctx),
        Err(reason) => {
            no_adapter(reason);
            None
        }
    }
}

/// An engine on `ctx` storing the gallery as `format`, in chunks of `chunk_rows` rows.
pub fn engine(ctx: &GpuContext, format: StorageFormat, chunk_rows: Option<usize>) -> GpuEngine {
    let options = GpuOptions {
        format,
        allow_software: true,
        chunk_rows,
        cpu_threads: 1,
    };
    GpuEngine::on(ctx.clone(), &options)
}

/// The formats `ctx` can store: f16 only where SHADER_F16 is offered (said when it is not).
pub fn formats(ctx: &GpuContext) -> Vec<StorageFormat> {
    let mut formats = vec![StorageFormat::F32, StorageFormat::Int8];
    if ctx.supports_f16() {
        formats.push(StorageFormat::F16);
    } else {
        eprintln!(
            "f16 not offered by {}: f16 cases skipped",
            ctx.adapter_info().name
        );
    }
    formats
}
