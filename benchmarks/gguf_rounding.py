"""How much a student's logits move when its matrices are rounded as a GGUF type stores them, in PyTorch.

    PYTHONPATH=src python benchmarks/gguf_rounding.py STUDENT_FOLDER \
        --data ../shared/data/corpus/wikipedia_en_2015/valid.jsonl.gz --docs 2 --tokens 256

Every 2-D parameter that export-gguf quantises (all but the decay LoRA w1/w2) goes through
gguf.quants' f16 / q8_0 codec and back; the logits on the first --docs held-out documents are
compared with the fp32 ones (max and mean |Δ|, top-1 agreement). This separates the student's own
sensitivity to weight rounding from what llama.cpp adds (activation rounding) in gguf_parity.py.
"""

from __future__ import annotations

import argparse
import gzip
import json

import gguf
import numpy as np
import torch


def main() -> int:
    from radlads.loading import load_model
    from radlads.ppl import prefix_token_id

    p = argparse.ArgumentParser()
    p.add_argument("student")
    p.add_argument("--data", required=True)
    p.add_argument("--docs", type=int, default=2)
    p.add_argument("--tokens", type=int, default=256)
    args = p.parse_args()
    torch.set_num_threads(1)
    model, tok = load_model(args.student, torch.float32, quiet=True)
    with gzip.open(args.data, "rt") as f:
        docs = [json.loads(line)["text"] for line, _ in zip(f, range(args.docs))]
    seqs = [[prefix_token_id(tok)] + tok.encode(d, add_special_tokens=False)[: args.tokens] for d in docs]
    with torch.no_grad():
        ref = [model(torch.tensor([s])).logits[0] for s in seqs]
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    for qtype in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.Q8_0):
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.dim() < 2 or name.endswith(("time_mix.w1", "time_mix.w2")):
                    continue
                a = np.ascontiguousarray(param.detach().numpy())
                param.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(a, qtype), qtype).reshape(a.shape)))
            out = [model(torch.tensor([s])).logits[0] for s in seqs]
        model.load_state_dict(saved)
        diff = torch.cat([(o - r).abs().flatten() for o, r in zip(out, ref)])
        agree = sum(int((o.argmax(-1) == r.argmax(-1)).sum()) for o, r in zip(out, ref)) / sum(map(len, seqs))
        print(f"{qtype.name}: rounded weights vs fp32: max |Δ| {float(diff.max()):.4g}, mean |Δ| "
              f"{float(diff.mean()):.4g}, top-1 agreement {agree:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
