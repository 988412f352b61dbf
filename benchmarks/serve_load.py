"""Aggregate tokens/s of GGUFs behind llama-cpp-python's OpenAI-compatible server, N concurrent clients.

    PYTHONPATH=src python benchmarks/serve_load.py A.gguf B.gguf --tokenizer STUDENT_FOLDER \
        --data ../shared/data/corpus/wikipedia_en_2015/valid.jsonl.gz --prompt-tokens 4096 \
        --clients 1,4,16 --max-tokens 16 --threads 1 --json out.json

For each GGUF a server is started on 127.0.0.1 (radlads.serve.Server: `python -m llama_cpp.server
--model A.gguf`), and for each client count N, N threads each send --requests chat completions
(greedy, --max-tokens each) and the wall time of the whole round gives aggregate completion
tokens/s (and prompt + completion tokens/s). Every request's prompt is a different held-out text of
about --prompt-tokens tokens, so no request can reuse another's cached prefix. Loopback only,
bounded: clients × requests requests per round.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def prompts(data: str, tokenizer, n: int, tokens: int) -> list[str]:
    """n different texts of about `tokens` tokens each, cut from consecutive held-out documents."""
    from radlads.data import read_texts

    stream = []
    for text in read_texts(data):
        stream += tokenizer.encode(text, add_special_tokens=False)
        if len(stream) >= n * tokens:
            break
    return [tokenizer.decode(stream[i * tokens : (i + 1) * tokens]) for i in range(n)]


def main() -> int:
    from transformers import AutoTokenizer

    from radlads import serve

    p = argparse.ArgumentParser()
    p.add_argument("ggufs", nargs="+")
    p.add_argument("--tokenizer", required=True, help="a folder with the (shared) HF tokenizer, to cut prompts")
    p.add_argument("--data", required=True)
    p.add_argument("--prompt-tokens", type=int, default=4096)
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--requests", type=int, default=1, help="requests per client per round")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    args = p.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    tok = AutoTokenizer.from_pretrained(args.tokenizer, trust_remote_code=True)
    texts = prompts(args.data, tok, sum(clients) * args.requests, args.prompt_tokens - 40)
    report = {"prompt_tokens_target": args.prompt_tokens, "max_tokens": args.max_tokens, "threads": args.threads,
              "requests_per_client": args.requests, "models": {}}
    for path in args.ggufs:
        rows = []
        used = 0
        with serve.Server(path, n_ctx=args.prompt_tokens + args.max_tokens + 64, threads=args.threads,
                          log=f"/tmp/serve-{os.path.basename(path)}.log") as server:
            server.chat([{"role": "user", "content": "Hello"}], max_tokens=2)  # warm-up
            for n in clients:
                batch = texts[used : used + n * args.requests]
                used += n * args.requests
                queue = iter(batch)

                def messages():
                    return [{"role": "user", "content": next(queue) + "\n\nSummarize the text above."}]

                row = serve.load_test(server, n, messages, args.max_tokens, args.requests)
                row["load_average"] = "/".join(f"{x:.1f}" for x in os.getloadavg())
                rows.append(row)
                print(f"{os.path.basename(path)}: {n} clients: {row['completion_tokens_per_s']:.2f} completion tok/s, "
                      f"{row['all_tokens_per_s']:.1f} prompt+completion tok/s, {row['requests']} requests in "
                      f"{row['wall_s']:.1f} s (mean {row['mean_request_s']:.1f} s), errors {len(row['errors'])}, "
                      f"load {row['load_average']}", flush=True)
        report["models"][os.path.basename(path)] = rows
        time.sleep(1)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
