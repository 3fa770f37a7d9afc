#!/usr/bin/env python3
"""Greedy chat reference for SmolLM2-135M-Instruct Q4_1 via llama-cpp-python.

Each prompt is rendered from the GGUF's own `tokenizer.chat_template` with jinja2
(ImmutableSandboxedEnvironment, trim_blocks=True, lstrip_blocks=True, as HF transformers and
llama-cpp-python do), messages=[{"role": "user", "content": prompt}], add_generation_prompt=True.
The template inserts a default system message when the first message is not a system message.
The prompt is tokenized with special=True (ChatML markers -> single special ids), add_bos=False
(GGUF: tokenizer.ggml.add_bos_token=false).
Greedy decoding (argmax of raw logits; ties -> lowest id), at most 48 new tokens, stopping after
the EOS token (<|im_end|>, id 2) if produced (it is included in `generated`).
Two paths, differing only in how the prompt is evaluated: n_batch=512 (one decode) and n_batch=1
(one decode per prompt token); generated tokens are always fed back one at a time.
At each step: margin = top1 - top2 raw logit, logprob = log_softmax of the chosen token.
Run: python chat_greedy.py MODEL.gguf OUT.json   (in a llama-cpp-python venv; see README.md)
"""
import json, sys, time
import numpy as np
import jinja2.sandbox
import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

MODEL, OUT = sys.argv[1:3]  # model.gguf out.json
PROMPTS = [
    "Give me three tips for keeping houseplants alive.",
    "Explain what a hash table is in two sentences.",
    "Write a haiku about autumn rain.",
    "What should I pack for a weekend hiking trip?",
]
MAX_NEW, N_CTX, THREADS = 48, 512, 1


def render(template, prompt):
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=[{"role": "user", "content": prompt}], add_generation_prompt=True,
        bos_token="<|im_start|>", eos_token="<|im_end|>")


def greedy(llm, prompt_ids, eos):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt_ids)
    t_prompt = time.perf_counter() - t0
    gen, margins, logprobs = [], [], []
    t0 = time.perf_counter()
    for _ in range(MAX_NEW):
        lg = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        nxt = int(lg.argmax())
        top2 = np.partition(lg, -2)[-2:]
        m = lg.max()
        gen.append(nxt)
        margins.append(float(top2[1] - top2[0]))
        logprobs.append(float(lg[nxt] - (m + np.log(np.exp(lg - m).sum()))))
        if nxt == eos:
            break
        llm.eval([nxt])
    return gen, margins, logprobs, t_prompt, time.perf_counter() - t0


def main():
    meta_llm = llama_cpp.Llama(MODEL, vocab_only=True, verbose=False)
    template = meta_llm.metadata["tokenizer.chat_template"]
    assert meta_llm.metadata.get("tokenizer.ggml.add_bos_token") == "false"
    eos = meta_llm.token_eos()
    del meta_llm

    paths = {"batched": 512, "token_by_token": 1}
    llms = {k: llama_cpp.Llama(MODEL, n_ctx=N_CTX, n_batch=nb, n_ubatch=nb, n_threads=THREADS,
                               n_threads_batch=THREADS, logits_all=True, seed=0, verbose=False)
            for k, nb in paths.items()}
    fmt = Jinja2ChatFormatter(template=template, eos_token="<|im_end|>", bos_token="<|im_start|>")

    cases = []
    for p in PROMPTS:
        text = render(template, p)
        # cross-check against llama-cpp-python's own GGUF-template formatter
        assert fmt(messages=[{"role": "user", "content": p}]).prompt == text
        ids = llms["batched"].tokenize(text.encode("utf-8"), add_bos=False, special=True)
        case = {"prompt": p, "rendered_prompt": text, "prompt_ids": [int(t) for t in ids]}
        for name, llm in llms.items():
            gen, margins, lps, tp, tg = greedy(llm, ids, eos)
            case[name] = {"generated": gen, "margins": margins, "logprobs": lps,
                          "text": llm.detokenize(gen, special=True).decode("utf-8", "replace"),
                          "stopped_at_eos": gen[-1] == eos,
                          "prompt_eval_s": round(tp, 3), "gen_s": round(tg, 3)}
        a, b = case["batched"]["generated"], case["token_by_token"]["generated"]
        div = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), None)
        if div is None and len(a) != len(b):
            div = min(len(a), len(b))
        case["first_divergence"] = div
        cases.append(case)
        print(f"--- {p!r}: {len(ids)} prompt tokens; generated {len(a)}/{len(b)} tokens; "
              f"first divergence: {div}; min margin batched {min(case['batched']['margins']):.4f}")
        print("  batched:", repr(case["batched"]["text"]))
        if div is not None:
            print("  tbt    :", repr(case["token_by_token"]["text"]))

    out = {"model": MODEL, "llama_cpp_python": llama_cpp.__version__, "chat_template": template,
           "settings": {"n_ctx": N_CTX, "n_threads": THREADS, "max_new_tokens": MAX_NEW, "greedy": True,
                        "add_bos": False, "special": True, "eos_id": eos, "paths": paths,
                        "default_system_message_inserted": "You are a helpful AI assistant named SmolLM, trained by Hugging Face" in cases[0]["rendered_prompt"]},
           "cases": cases}
    json.dump(out, open(OUT, "w"), indent=1)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
