#!/usr/bin/env python3
"""Teacher-forced reference for SmolLM2-135M-Instruct Q4_1 via llama-cpp-python.

Tokenizes text.txt with the GGUF's own tokenizer (add_bos=False: the GGUF has
tokenizer.ggml.add_bos_token=false, so no BOS is prepended; special=False), keeps the
first 1024 tokens, and evaluates them with logits_all=True, n_ctx=2048, 1 thread (AVX2 build; the AVX-512 reference used 2):
  (a) batched:        n_batch=512 (n_ubatch=512)  -> 2 decode calls
  (b) token_by_token: n_batch=1   (n_ubatch=1)    -> 1024 decode calls
For each position i in 0..1022 (logits after token i, predicting token i+1):
  argmax[i]  = argmax of raw logits
  logprob[i] = log_softmax(raw logits)[tokens[i+1]]   (computed in float64)
  margin[i]  = top1 logit - top2 logit
Run: python teacher_forced.py MODEL.gguf TEXT.txt OUT.json   (in a llama-cpp-python venv; see README.md)
"""
import json, math, time, sys
import numpy as np
import llama_cpp

MODEL, TEXT, OUT = sys.argv[1:4]  # model.gguf text.txt out.json
N_TOK, N_CTX, THREADS = 1024, 2048, 1


def make(n_batch):
    return llama_cpp.Llama(MODEL, n_ctx=N_CTX, n_batch=n_batch, n_ubatch=n_batch,
                           n_threads=THREADS, n_threads_batch=THREADS,
                           logits_all=True, seed=0, verbose=False)


def stats(logits, toks):
    lg = logits[: len(toks) - 1].astype(np.float64)          # positions 0..n-2
    nxt = np.asarray(toks[1:])
    top2 = np.partition(lg, -2, axis=1)[:, -2:]
    margin = np.abs(top2[:, 1] - top2[:, 0])
    m = lg.max(axis=1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(lg - m).sum(axis=1)))
    logprob = lg[np.arange(len(nxt)), nxt] - lse
    return {"argmax": lg.argmax(axis=1).astype(int).tolist(),
            "logprob": [float(x) for x in logprob],
            "margin": [float(x) for x in margin]}


def run(n_batch, toks):
    llm = make(n_batch)
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(toks)
    dt = time.perf_counter() - t0
    logits = np.array(llm.scores[: len(toks)], dtype=np.float32, copy=True)
    assert np.isfinite(logits).all()
    del llm
    return stats(logits, toks), dt, logits


def main():
    text = open(TEXT, encoding="utf-8").read()
    tok = llama_cpp.Llama(MODEL, vocab_only=True, verbose=False)
    assert tok.metadata.get("tokenizer.ggml.add_bos_token") == "false"
    all_toks = tok.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    toks = all_toks[:N_TOK]
    print(f"text: {len(all_toks)} tokens total, using first {len(toks)}; first ids {toks[:8]}")
    del tok

    res, times, raw = {}, {}, {}
    for name, nb in (("batched", 512), ("token_by_token", 1)):
        res[name], times[name], raw[name] = run(nb, toks)
        lp = np.array(res[name]["logprob"])
        print(f"{name:15s} n_batch={nb:3d}: eval {times[name]:.2f}s, "
              f"ppl={math.exp(-lp.mean()):.4f}, mean NLL={-lp.mean():.5f}")

    a, b = np.array(res["batched"]["argmax"]), np.array(res["token_by_token"]["argmax"])
    agree = int((a == b).sum())
    d = np.abs(raw["batched"][: len(toks) - 1] - raw["token_by_token"][: len(toks) - 1])
    lpd = np.abs(np.array(res["batched"]["logprob"]) - np.array(res["token_by_token"]["logprob"]))
    dis = np.nonzero(a != b)[0].tolist()
    print(f"argmax agreement batched vs token_by_token: {agree}/{len(a)} ({100*agree/len(a):.2f}%)")
    if dis:
        print("  disagreeing positions (pos: batched/tbt argmax, batched margin, tbt margin):")
        for i in dis[:20]:
            print(f"   {i}: {a[i]}/{b[i]}  {res['batched']['margin'][i]:.4f} {res['token_by_token']['margin'][i]:.4f}")
    print(f"max |logit diff| = {d.max():.4f}, mean |logit diff| = {d.mean():.5f}; "
          f"max |logprob diff| = {lpd.max():.4f}, mean = {lpd.mean():.5f}")
    b_ = np.array(res["batched"]["argmax"]); acc = float((b_ == np.array(toks[1:])).mean())
    print(f"batched top-1 accuracy vs actual next token: {100*acc:.2f}%")

    out = {
        "model": MODEL, "text_file": TEXT, "llama_cpp_python": llama_cpp.__version__,
        "settings": {"n_ctx": N_CTX, "n_threads": THREADS, "add_bos": False, "special": False,
                     "n_tokens": len(toks), "batched_n_batch": 512, "token_by_token_n_batch": 1,
                     "note": "arrays have len(tokens)-1 entries; entry i = logits after token i, predicting token i+1; "
                             "logprob = log_softmax(raw logits) of tokens[i+1]; margin = top1 - top2 raw logit"},
        "tokens": [int(t) for t in toks],
        "batched": res["batched"],
        "token_by_token": res["token_by_token"],
        "summary": {
            "ppl_batched": math.exp(-np.mean(res["batched"]["logprob"])),
            "ppl_token_by_token": math.exp(-np.mean(res["token_by_token"]["logprob"])),
            "argmax_agreement": agree, "positions": len(a), "disagree_positions": dis,
            "max_abs_logit_diff": float(d.max()), "mean_abs_logit_diff": float(d.mean()),
            "eval_seconds": times,
        },
    }
    json.dump(out, open(OUT, "w"))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
