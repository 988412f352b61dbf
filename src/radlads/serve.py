"""An exported GGUF behind llama-cpp-python's OpenAI-compatible server, and a loopback load test.

    python -m llama_cpp.server --model OUT.gguf --host 127.0.0.1 --port 8000

`Server` starts that exact command on a free loopback port, waits until it answers, sends
chat-completion requests (greedy: temperature 0, no repeat penalty) and stops it; `load_test`
measures aggregate generated tokens/s with N concurrent clients, each sending a bounded number of
requests. Used by tests/test_gguf.py and benchmarks/serve_load.py.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from radlads.errors import RadladsError

GREEDY = {"temperature": 0.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0,
          "presence_penalty": 0.0, "frequency_penalty": 0.0, "seed": 0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE vocabularies spell bytes this way)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def bytes_text(tokenizer, ids: list[int]) -> str:
    """What llama.cpp's detokeniser + llama-cpp-python return for byte-level BPE ids: the tokens'
    bytes joined, special tokens dropped, invalid UTF-8 ignored (not replaced by U+FFFD)."""
    decoder = {c: b for b, c in _bytes_to_unicode().items()}
    special = set(tokenizer.all_special_ids)
    data = bytearray()
    for piece in tokenizer.convert_ids_to_tokens([i for i in ids if i not in special]):
        data.extend(decoder[c] for c in piece)
    return data.decode("utf-8", errors="ignore")


class Server:
    """`python -m llama_cpp.server --model GGUF` on 127.0.0.1, as a context manager."""

    def __init__(self, model: str | Path, n_ctx: int = 4096, threads: int = 1, port: int | None = None,
                 log: str | Path | None = None, extra: list[str] | None = None, timeout: float = 120):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                        "--port", str(self.port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
                        "--n_threads_batch", str(threads), *(extra or [])]
        self.log = Path(log) if log else None
        self.timeout = timeout
        self.process: subprocess.Popen | None = None

    def __enter__(self):
        out = open(self.log, "w") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RadladsError(f"llama_cpp.server exited with code {self.process.returncode} "
                                   f"(log: {self.log or 'not kept'})")
            try:
                with urllib.request.urlopen(self.url + "/v1/models", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RadladsError(f"llama_cpp.server did not answer on {self.url} within {self.timeout:g} s")

    def __exit__(self, *exc):
        self.stop()
        return False

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def chat(self, messages: list[dict], max_tokens: int, stream: bool = False, timeout: float = 600):
        """One chat completion: the response object, or with stream=True the list of chunk objects."""
        body = {"messages": messages, "max_tokens": max_tokens, "stream": stream, **GREEDY}
        req = urllib.request.Request(self.url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            if not stream:
                return json.loads(r.read())
            chunks = []
            for line in r:
                line = line.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    break
                chunks.append(json.loads(data))
            return chunks


def load_test(server: Server, clients: int, messages, max_tokens: int, requests_per_client: int = 1):
    """Aggregate completion tokens/s with `clients` concurrent loops of `requests_per_client` requests.

    `messages` is a chat message list, or a callable returning one per request (distinct prompts, so
    no request reuses another's cached prefix)."""
    results, errors = [], []

    def client():
        for _ in range(requests_per_client):
            t0 = time.perf_counter()
            try:
                reply = server.chat(messages() if callable(messages) else messages, max_tokens)
            except OSError as e:  # a refused or timed-out request is reported, not retried
                errors.append(str(e))
                continue
            results.append({"seconds": time.perf_counter() - t0, **reply["usage"]})

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    completion = sum(r["completion_tokens"] for r in results)
    prompt = sum(r["prompt_tokens"] for r in results)
    return {"clients": clients, "requests": len(results), "errors": errors, "wall_s": wall,
            "completion_tokens": completion, "prompt_tokens": prompt,
            "completion_tokens_per_s": completion / wall, "all_tokens_per_s": (completion + prompt) / wall,
            "mean_request_s": sum(r["seconds"] for r in results) / max(len(results), 1)}
