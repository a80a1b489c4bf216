"""TransformerLens's side of `make bench-peers` (benchmarks/peers.py): the lab's default task and the
TransformerLens-matched model trained with HookedTransformer, timed from the parent's launch.

Runs in the peers' environment only (`make setup-peers`: torch 2.13 CPU, transformer_lens 3.9.0);
standard library + torch + transformer_lens, nothing from the lab:

    .venv-peers/bin/python benchmarks/peer_transformer_lens.py --t0 "$(date +%s.%N)" --steps 1500

Model: HookedTransformer, 2 layers, 2 heads, d_model 64, d_head 32, n_ctx 64, vocabulary 65 (64 tokens
+ BOS), attention-only, no LayerNorm, learned positions, TransformerLens's own initialisation; no hooks.
Training: Adam at 1e-3, batches of 64 sequences x 64 tokens, next-token cross-entropy at every position
(`return_type="loss"`). Data: the lab's token induction task (lab/tasks/induction.py) in torch,
vectorised: BOS (id 64) at position 0, uniform random tokens in [0, 64), and per sequence a segment of
length n ~ U{4..24} starting at s ~ U{1..T-2n} tiled to the end of the sequence.

Printed lines (machine-readable, `<name> <value>`; times in seconds since --t0, the parent's
time.time() at launch, so that the interpreter's start and the imports count; offsets are measured
with time.perf_counter() from one time.time() reading at this script's first line):
    imports_done <s>         torch and transformer_lens imported
    model_ready <s>          model and optimiser built
    loss <step> <mean>       the mean training loss of the last --log-every steps (a .item() sync,
                             as the lab logs every 25 steps)
    first_chunk <s>          after step --log-every (25), its loss read
    last_step <s>            after the last step, its loss read
"""
import time

_WALL0, _PERF0 = time.time(), time.perf_counter()   # first: the offsets below start from here

import argparse  # noqa: E402
import sys  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--t0", type=float, default=None,
                   help="the launching process's time.time() at launch (default: this script's start)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--log-every", type=int, default=25)
    return p.parse_args(argv)


args = parse_args()
T0 = _WALL0 if args.t0 is None else args.t0


def mark(name: str) -> None:
    print(f"{name} {_WALL0 - T0 + time.perf_counter() - _PERF0:.4f}", flush=True)


import torch  # noqa: E402
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

mark("imports_done")

VOCAB, BOS, SEQ, BATCH, MIN_N, MAX_N = 64, 64, 64, 64, 4, 24


def sample(batch: int, gen: torch.Generator) -> torch.Tensor:
    """(batch, SEQ) int64 tokens of the lab's induction task, drawn per sequence."""
    tokens = torch.randint(0, VOCAB, (batch, SEQ), generator=gen)
    n = torch.randint(MIN_N, MAX_N + 1, (batch,), generator=gen)
    # s ~ U{1..SEQ-2n}: (SEQ - 2n) values from 1
    start = 1 + torch.minimum((torch.rand(batch, generator=gen) * (SEQ - 2 * n)).long(), SEQ - 2 * n - 1)
    pos = torch.arange(SEQ)
    rel = pos - start[:, None]
    src = torch.where(rel >= 0, start[:, None] + rel % n[:, None], pos)   # from s on: the segment, tiled
    tokens = tokens.gather(1, src)
    tokens[:, 0] = BOS
    return tokens


def main() -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = HookedTransformerConfig(n_layers=2, n_heads=2, d_model=64, d_head=32, n_ctx=SEQ, d_vocab=VOCAB + 1,
                                  attn_only=True, normalization_type=None, act_fn=None,
                                  positional_embedding_type="standard", init_weights=True, seed=args.seed,
                                  device="cpu")
    model = HookedTransformer(cfg)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(args.seed)
    mark("model_ready")
    total, since = torch.zeros(()), 0
    for step in range(1, args.steps + 1):
        loss = model(sample(BATCH, gen), return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach()
        since += 1
        if step % args.log_every == 0 or step == args.steps:
            print(f"loss {step} {total.item() / since:.4f}", flush=True)
            total, since = torch.zeros(()), 0
            if step == args.log_every:
                mark("first_chunk")
    mark("last_step")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
