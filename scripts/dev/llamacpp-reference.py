#!/usr/bin/env python3
"""Regenerates llama.cpp greedy reference outputs on THIS machine's CPU.

llama.cpp's results depend on the SIMD paths it was built with (AVX2 vs AVX-512 vs NEON
change reduction orders and therefore near-ties). The shared reference was produced on a
different CPU; this writes a companion file for the machine at hand so the engine can be
held to llama.cpp's exact tokens here too.

Needs `pip install llama-cpp-python==0.3.36` (builds llama.cpp; ~10 min). Not run by CI.

    python3 scripts/dev/llamacpp-reference.py MODEL.gguf IN.json OUT.json
"""
import json
import platform
import sys

from llama_cpp import Llama


def main() -> None:
    model_path, src, dst = sys.argv[1:4]
    ref = json.load(open(src))
    llm = Llama(model_path=model_path, n_ctx=512, n_threads=1, logits_all=True, verbose=False)
    eos = llm.token_eos()
    cases = []
    for case in ref["cases"]:
        llm.reset()
        llm.eval(case["prompt_ids"])
        out = []
        for _ in range(case["max_tokens"]):
            logits = llm.scores[llm.n_tokens - 1]
            tok = int(max(range(len(logits)), key=lambda i: (logits[i], -i)))
            out.append(tok)
            if case["stop_at_eos"] and tok == eos:
                break
            llm.eval([tok])
        cases.append({**case, "output_ids": out, "output_text": llm.detokenize(out).decode("utf-8", "replace")})
    flags = open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0].split()
    simd = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_vnni") if f in flags]
    json.dump(
        {
            **{k: v for k, v in ref.items() if k != "cases"},
            "engine": f"llama.cpp (llama-cpp-python 0.3.36, CPU {platform.machine()} {'+'.join(simd)}, 1 thread)",
            "cases": cases,
        },
        open(dst, "w"),
        indent=1,
    )


if __name__ == "__main__":
    main()
