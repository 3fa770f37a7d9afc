//! `kwaainet bench`: prefill and decode speed and peak memory of a model on the CPU.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kwaainet_core::BatchSeq;
use kwaainet_core::Llama;

/// Arguments of `kwaainet bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// GGUF model file (default: the default model, fetched when missing).
    #[arg(long, env = "KWAAINET_MODEL")]
    pub model: Option<PathBuf>,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens decoded one at a time after the prompt.
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Timed runs per setting (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Thread counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2])]
    pub threads: Vec<usize>,
    /// Generate through span servers (real nodes on loopback) instead: 1, 2 and 3 hops,
    /// with and without server-to-server push, per codec, and the recovery after a kill.
    #[arg(long)]
    pub swarm: bool,
    /// With --swarm: chains of these many hops.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 3])]
    pub hops: Vec<usize>,
    /// With --swarm: the codecs to measure.
    #[arg(long, value_delimiter = ',', default_values_t = ["f32".to_owned(), "f16".to_owned(), "q8_0".to_owned(), "blockwise8".to_owned()])]
    pub codecs: Vec<String>,
    /// With --swarm: milliseconds added one way to every frame (client links and pushes).
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Also decode this many sequences together (comma-separated batch sizes), one batched
    /// pass over the weights per step as the API's continuous batching runs them, and print
    /// the aggregate decode rate beside the single-sequence one.
    #[arg(long, value_delimiter = ',')]
    pub batch: Vec<usize>,
}

struct Sample {
    prefill: Duration,
    decode: Duration,
}

fn one_run(model: &Llama, prompt: &[u32], gen_tokens: usize) -> anyhow::Result<Sample> {
    let mut cache = model.new_cache(0..model.config().n_layers, prompt.len() + gen_tokens + 1)?;
    let t0 = Instant::now();
    let mut logits = model.forward(prompt, &mut cache)?;
    let prefill = t0.elapsed();
    let t1 = Instant::now();
    for _ in 0..gen_tokens {
        let next = argmax(&logits);
        logits = model.forward(&[next], &mut cache)?;
    }
    Ok(Sample {
        prefill,
        decode: t1.elapsed(),
    })
}

/// `batch` sequences, each prefilled with `prompt`, decoded `gen_tokens` steps together
/// (greedy): the time of the decode steps.
fn batch_run(
    model: &Llama,
    prompt: &[u32],
    batch: usize,
    gen_tokens: usize,
) -> anyhow::Result<Duration> {
    let n_layers = model.config().n_layers;
    let mut caches = (0..batch)
        .map(|_| model.new_cache(0..n_layers, prompt.len() + gen_tokens + 1))
        .collect::<kwaainet_core::Result<Vec<_>>>()?;
    let mut next = Vec::with_capacity(batch);
    for cache in &mut caches {
        next.push(argmax(&model.forward(prompt, cache)?));
    }
    let rows: Vec<usize> = (0..batch).collect();
    let vocab = model.config().vocab_size;
    let t = Instant::now();
    for _ in 0..gen_tokens {
        let mut hidden = model.embed(&next)?;
        let mut seqs: Vec<BatchSeq<'_>> = caches
            .iter_mut()
            .map(|cache| BatchSeq {
                cache,
                n: 1,
                prompt: false,
            })
            .collect();
        model.forward_batch(&mut hidden, &mut seqs)?;
        let logits = model.logits_rows(&hidden, &rows)?;
        next = logits.chunks_exact(vocab).map(argmax).collect();
    }
    Ok(t.elapsed())
}

/// The index of the largest logit (greedy decoding).
pub(crate) fn argmax(l: &[f32]) -> u32 {
    l.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0 as u32
}

/// The median of `v` (the upper one of an even count).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Peak resident set size of this process in bytes (Linux), if known.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[allow(clippy::print_stdout)]
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.swarm {
        return crate::swarm_bench::run(args);
    }
    anyhow::ensure!(
        args.runs > 0 && args.prompt_tokens > 0 && args.gen_tokens > 0,
        "runs and token counts must be > 0"
    );
    let path = crate::model::resolve(args.model.as_deref())?;
    let t = Instant::now();
    let loaded = crate::model::load(&path)?;
    let load_time = t.elapsed();
    let model = &loaded.model;
    // A fixed, realistic prompt: the start of a text, repeated up to the requested length.
    let text = "The history of distributed computing begins with networks of machines that \
                shared work over slow links. Volunteers donated spare cycles to science, and \
                later, peer-to-peer systems spread files and computation across the world. ";
    let mut prompt = loaded.tokenizer.encode(text, false)?;
    anyhow::ensure!(!prompt.is_empty(), "the tokenizer produced no tokens");
    while prompt.len() < args.prompt_tokens {
        prompt.extend_from_within(..prompt.len().min(args.prompt_tokens - prompt.len()));
    }
    prompt.truncate(args.prompt_tokens);

    println!(
        "model: {} ({:.1} MB file, {:.1} MB weights in memory, loaded in {:.2} s)",
        loaded.path.display(),
        loaded.file_bytes as f64 / 1e6,
        model.weight_bytes() as f64 / 1e6,
        load_time.as_secs_f64()
    );
    println!(
        "prompt {} tokens, decode {} tokens, median of {} runs",
        args.prompt_tokens, args.gen_tokens, args.runs
    );
    println!(
        "{:>8} {:>16} {:>16}",
        "threads", "prefill tok/s", "decode tok/s"
    );
    for &threads in &args.threads {
        let pool = crate::pool(Some(threads))?;
        let samples = pool.install(|| {
            // One warm-up run pages weights in and settles the allocator.
            one_run(model, &prompt, args.gen_tokens.min(8))?;
            (0..args.runs)
                .map(|_| one_run(model, &prompt, args.gen_tokens))
                .collect::<anyhow::Result<Vec<_>>>()
        })?;
        let pf = median(
            samples
                .iter()
                .map(|s| args.prompt_tokens as f64 / s.prefill.as_secs_f64())
                .collect(),
        );
        let dc = median(
            samples
                .iter()
                .map(|s| args.gen_tokens as f64 / s.decode.as_secs_f64())
                .collect(),
        );
        println!("{threads:>8} {pf:>16.1} {dc:>16.1}");
        for &b in &args.batch {
            anyhow::ensure!(b > 0, "batch sizes must be > 0");
            let rates = pool.install(|| {
                batch_run(model, &prompt, b, args.gen_tokens.min(8))?;
                (0..args.runs)
                    .map(|_| {
                        batch_run(model, &prompt, b, args.gen_tokens)
                            .map(|d| (b * args.gen_tokens) as f64 / d.as_secs_f64())
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
            })?;
            let agg = median(rates);
            println!(
                "{threads:>8} batch {b:>3}: aggregate decode {agg:.1} tok/s ({:.2}x one sequence), {:.1} tok/s per sequence",
                agg / dc,
                agg / b as f64
            );
        }
    }
    if let Some(rss) = peak_rss() {
        println!(
            "peak RSS: {:.1} MB ({:.2}x the GGUF file)",
            rss as f64 / 1e6,
            rss as f64 / loaded.file_bytes as f64
        );
    }
    Ok(())
}
