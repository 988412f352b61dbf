"""Stream a model's continuation of a prompt to stdout, token by token (`radlads generate`).

Generation is transformers' `model.generate` (the student carries its recurrent state through
it, the teacher its KV cache), so sampling is exactly what `model.generate` does with the same
settings and seed. The sampling settings come only from the flags, never from the model's
generation_config (an instruct model's defaults, e.g. a repetition penalty, would otherwise
make students and teachers hard to compare). --temperature 0 (the default) is greedy.
Speed goes to stderr, so stdout holds only the generated text.
"""

from __future__ import annotations

import sys
import time

import torch
from transformers.generation.streamers import BaseStreamer

from radlads.errors import RadladsError


class StdoutStreamer(BaseStreamer):
    """A transformers streamer that prints each new token's text as soon as it is complete.

    generate() calls put() first with the prompt, then once per new token, then end(). Text is
    decoded from all new tokens so far (so multi-token characters and leading spaces come out
    right); it is held back only while it ends in an incomplete UTF-8 sequence.
    """

    def __init__(self, tokenizer, stream=None):
        self.tokenizer = tokenizer
        self.stream = stream
        self.tokens: list[int] = []
        self.token_times: list[float] = []
        self.start: float | None = None
        self._printed = 0

    def _write(self, text: str) -> None:
        out = self.stream or sys.stdout
        out.write(text)
        out.flush()

    def put(self, value: torch.Tensor) -> None:
        if self.start is None:  # the prompt
            self.start = time.perf_counter()
            return
        self.tokens.extend(int(t) for t in value.flatten())
        self.token_times.append(time.perf_counter())
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            self._write(text[self._printed:])
            self._printed = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        self._write(text[self._printed:] + "\n")
        self._printed = len(text)


def encode_prompt(tokenizer, prompt: str, chat: bool = False, system: str | None = None) -> torch.Tensor:
    """Prompt token ids (1, T): plain text, or the tokenizer's chat template with a generation prompt."""
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise RadladsError("--chat: this model's tokenizer has no chat template; drop --chat for a plain prompt")
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        if system:
            raise RadladsError("--system needs --chat (a system message only exists in a chat template)")
        ids = tokenizer(prompt)["input_ids"]
    if not ids:
        raise RadladsError("the prompt is empty and the tokenizer adds no BOS token to start from")
    return torch.tensor([ids], dtype=torch.long)


def generation_config(model, tokenizer, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                      top_k: int = 0):
    """Flags -> GenerationConfig; only the stop and pad tokens are taken from the model."""
    from transformers import GenerationConfig

    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if isinstance(eos, int) else None)
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k) if temperature > 0 else \
        dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    return GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad, **sampling)


@torch.no_grad()
def stream_generate(model, tokenizer, input_ids: torch.Tensor, config, seed: int = 0, stream=None) -> StdoutStreamer:
    """Generate with `config`, printing as it goes; returns the streamer (tokens and timings)."""
    streamer = StdoutStreamer(tokenizer, stream)
    torch.manual_seed(seed)
    model.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config, streamer=streamer)
    return streamer


def speed_line(streamer: StdoutStreamer, prompt_tokens: int) -> str:
    n = len(streamer.tokens)
    if n == 0 or streamer.start is None:
        return "generated 0 tokens"
    total = streamer.token_times[-1] - streamer.start
    line = f"{n} tokens in {total:.2f} s: {n / total:.1f} tokens/s"
    first = streamer.token_times[0] - streamer.start
    if n > 1:
        decode = (n - 1) / (streamer.token_times[-1] - streamer.token_times[0])
        line += f" (prompt {prompt_tokens} tokens, first token after {first:.2f} s, then {decode:.1f} tokens/s)"
    return line


def generate_text(spec: str, prompt: str, chat: bool = False, system: str | None = None, max_new_tokens: int = 128,
                  temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
                  dtype: str = "fp32") -> StdoutStreamer:
    """Load a model, stream its continuation of `prompt` to stdout, and say how fast on stderr."""
    from radlads.dtypes import torch_dtype
    from radlads.loading import load_model
    from radlads.scoring import context_limit

    model, tokenizer = load_model(spec, torch_dtype(dtype), quiet=True)
    input_ids = encode_prompt(tokenizer, prompt, chat, system)
    limit = context_limit(model)
    if limit is not None and input_ids.shape[1] + max_new_tokens > limit:
        print(f"note: prompt + new tokens ({input_ids.shape[1] + max_new_tokens}) exceed the model's "
              f"max_position_embeddings ({limit}); output past it may degrade", file=sys.stderr)
    config = generation_config(model, tokenizer, max_new_tokens, temperature, top_p, top_k)
    streamer = stream_generate(model, tokenizer, input_ids, config, seed)
    print(speed_line(streamer, input_ids.shape[1]), file=sys.stderr)
    return streamer
