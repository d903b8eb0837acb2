"""llama.cpp on GGUF files, in its own process (tests/gguf_peers.py's ``llama_cpp_run``).

stdin: a JSON list of jobs ``{"model": PATH, "tokens": [ids], "logits": NPY_PATH, "texts": [str],
"f32_cache": bool}``; stdout: a JSON list, per job ``{"tokens": [[ids] per text], "n_vocab": int,
"metadata": {key: str}}``. Each model is loaded with ``llama_cpp.Llama(n_ctx=64, logits_all=True,
n_threads=1)``; ``tokens`` are evaluated in one batch and the logits of every position saved with numpy;
each text is tokenized with ``add_bos=True``. ``f32_cache``: the KV cache in float32 (GGML type 0) instead of
llama.cpp's default f16, so a float32 model's logits are not rounded through f16 keys and values.
"""

from __future__ import annotations

import json
import sys

import llama_cpp
import numpy as np

GGML_TYPE_F32 = 0


def run(job: dict) -> dict:
    cache = {"type_k": GGML_TYPE_F32, "type_v": GGML_TYPE_F32} if job.get("f32_cache") else {}
    llm = llama_cpp.Llama(job["model"], n_ctx=64, logits_all=True, verbose=False, n_threads=1, **cache)
    try:
        out = {"n_vocab": llm.n_vocab(), "metadata": dict(llm.metadata)}
        if job.get("tokens"):
            llm.eval(job["tokens"])
            np.save(job["logits"], np.array(llm.scores[: len(job["tokens"])], dtype=np.float32))
        out["tokens"] = [llm.tokenize(text.encode(), add_bos=True) for text in job.get("texts", [])]
        return out
    finally:
        llm.close()  # explicitly: its destructor raises at interpreter exit otherwise


def main() -> None:
    jobs = json.loads(sys.stdin.read())
    json.dump([run(job) for job in jobs], sys.stdout)


if __name__ == "__main__":
    main()
