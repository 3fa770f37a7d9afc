//! `kwaainet generate`: stream a completion of a prompt to stdout.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use kwaainet_core::SamplerConfig;
use kwaainet_core::generate::{CpuSession, Event, GenerateOptions, Session, generate};

/// Arguments of `kwaainet generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// GGUF model file (default: the default model, fetched when missing).
    #[arg(long, env = "KWAAINET_MODEL")]
    pub model: Option<PathBuf>,
    /// Text to continue, or the user message with --chat.
    #[arg(long, short)]
    pub prompt: String,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat (default: the template's own).
    #[arg(long)]
    pub system: Option<String>,
    /// Most new tokens.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Top-k cut (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Top-p (nucleus) cut (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// RNG seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop before this text (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Context size in tokens (prompt + output).
    #[arg(long, default_value_t = 2048)]
    pub ctx: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub backend: Backend,
    /// Run the blocks on the swarm's span servers (found through --bootstrap's DHT); only
    /// the embedding and the output head run here.
    #[arg(long)]
    pub swarm: bool,
    /// With --swarm: a node of the swarm to join through (repeatable, or comma-separated).
    #[arg(long = "bootstrap", env = "KWAAINET_BOOTSTRAP", value_delimiter = ',')]
    pub bootstrap: Vec<kwaainet_p2p::libp2p::Multiaddr>,
    /// With --swarm: how hidden states travel: auto (by size), f32 (exact), f16, q8_0,
    /// blockwise8.
    #[arg(long, default_value = "auto")]
    pub codec: String,
    /// With --swarm: every hop's output comes back through this client instead of going
    /// straight to the next server (server-to-server push is the default).
    #[arg(long)]
    pub no_push: bool,
    /// With --swarm: run blocks only on nodes whose declared region lies in one of these
    /// (comma-separated ISO country codes, EU or EEA; default anywhere).
    #[arg(long, value_parser = parse_regions, default_value = "")]
    pub regions: kwaainet_p2p::region::AllowedRegions,
    /// The grid this machine draws from, for the generation's footprint (an ISO country
    /// code, EU or EEA; default the world's mean).
    #[arg(long)]
    pub grid: Option<String>,
}

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// Quantized SIMD kernels on the CPU.
    Cpu,
    /// burn's wgpu backend (Vulkan, Metal, DX12; WebGPU in browsers).
    Wgpu,
    /// burn's pure-Rust CPU backend (flex), f32 weights: a cross-check, not the fast path.
    BurnCpu,
}

pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    if args.swarm {
        return crate::swarm::generate(args);
    }
    let path = crate::model::resolve(args.model.as_deref())?;
    match args.backend {
        Backend::Cpu => {
            let loaded = crate::model::load(&path)?;
            let mut session = CpuSession::new(&loaded.model, args.ctx)?;
            stream(args, &loaded, &mut session)
        }
        #[cfg(feature = "gpu")]
        Backend::Wgpu | Backend::BurnCpu => {
            let device = match args.backend {
                Backend::Wgpu => crate::burn_backend::wgpu_device()?,
                _ => burn::tensor::Device::flex(),
            };
            let loaded = crate::model::load_burn(&path, &device)?;
            let mut session = crate::burn_backend::BurnSession::new(&loaded.model, args.ctx)?;
            stream(args, &loaded, &mut session)
        }
        #[cfg(not(feature = "gpu"))]
        Backend::Wgpu | Backend::BurnCpu => anyhow::bail!(
            "this kwaainet is the lean build, without the GPU stack: use --backend cpu, or a \
             build with the default features (`gpu`) for --backend {}",
            match args.backend {
                Backend::Wgpu => "wgpu",
                _ => "burn-cpu",
            }
        ),
    }
}

/// Generates in `session` and streams the text to stdout.
pub(crate) fn stream<M: Sync>(
    args: &GenerateArgs,
    loaded: &crate::model::Loaded<M>,
    session: &mut (impl Session + Send),
) -> anyhow::Result<()> {
    let ids = loaded.prompt_ids(&args.prompt, args.system.as_deref(), args.chat)?;
    let opts = GenerateOptions {
        max_tokens: args.max_tokens,
        sampler: SamplerConfig {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            repetition_penalty: args.repeat_penalty,
            seed: args.seed,
            ..SamplerConfig::default()
        },
        stop: args.stop.clone(),
        ignore_eos: false,
    };
    let pool = crate::pool(args.threads)?;
    // Through the swarm, the summary line reports the route's footprint instead.
    let grid = (!args.swarm)
        .then(|| crate::footprint::mix_of_region(args.grid.as_deref()))
        .transpose()
        .context("--grid")?;
    let source = kwaainet_footprint::meter::host_source();
    let mark = source.mark();
    let start = Instant::now();
    let mut prefill = None;
    let mut write_err = None;
    let out = pool.install(|| {
        let mut stdout = std::io::stdout().lock();
        generate(session, &loaded.tokenizer, &ids, &opts, |ev| match ev {
            Event::PrefillDone => {
                prefill = Some(start.elapsed());
                true
            }
            Event::Token { text, .. } => match stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Ok(()) => true,
                Err(e) => {
                    // A closed pipe (e.g. `| head`) ends generation quietly.
                    write_err = Some(e);
                    false
                }
            },
        })
    })?;
    if write_err.is_none() {
        writeln!(std::io::stdout()).context("cannot write to stdout")?;
    }
    let total = start.elapsed();
    let prefill = prefill.unwrap_or(total);
    let decode = total.saturating_sub(prefill);
    let n = out.tokens.len();
    tracing::info!(
        prompt_tokens = out.prompt_tokens,
        new_tokens = n,
        finish = ?out.finish,
        prefill_tok_s = format!("{:.1}", out.prompt_tokens as f64 / prefill.as_secs_f64()),
        decode_tok_s = format!("{:.1}", n.saturating_sub(1) as f64 / decode.as_secs_f64().max(1e-9)),
        "done"
    );
    if let Some(mix) = grid {
        let f = footprint(
            &mix,
            &*source,
            mark,
            total,
            pool.current_num_threads(),
            loaded.file_bytes,
        );
        tracing::info!(
            energy_uwh = f.energy_uwh,
            carbon_ug = f.carbon_ug,
            method = ?f.energy_method,
            grid = %f.regions.join(","),
            "footprint"
        );
    }
    Ok(())
}

/// A local generation's footprint: its time with every thread of the pool busy (the
/// kernels run on all of them) and the model's memory held, by the host's source (RAPL
/// where readable, from `mark`), on the `--grid`'s intensity.
fn footprint(
    mix: &kwaainet_footprint::grid::GridMix,
    source: &dyn kwaainet_footprint::meter::EnergySource,
    mark: kwaainet_footprint::meter::Mark,
    wall: std::time::Duration,
    threads: usize,
    memory_bytes: u64,
) -> kwaainet_footprint::Footprint {
    let usage = kwaainet_footprint::Usage {
        wall,
        cpu: wall.saturating_mul(u32::try_from(threads).unwrap_or(u32::MAX)),
        memory_bytes,
    };
    let energy = source.energy(mark, &usage);
    kwaainet_footprint::Footprint::of(energy, source.method().weakest(mix.method), mix, wall)
}

fn parse_regions(s: &str) -> Result<kwaainet_p2p::region::AllowedRegions, String> {
    kwaainet_p2p::region::AllowedRegions::parse(s).map_err(|e| e.to_string())
}
