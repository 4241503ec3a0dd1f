"""Train sklearn-lib's own small language model (the analog of the paper's TinyStories-1M).

A byte-level BPE tokenizer (``tokenizers``) is trained on the training documents of Debian's
``fortunes`` (document split of ``sklearn_lib.tasks.split_documents``, seed 0, 10% test), then a
HuggingFace ``GPT2LMHeadModel`` (8 layers, d_model 64, 4 heads, d_mlp 256, LayerNorm,
``gelu_new``, learned positions, 128 positions, tied embeddings) is trained with AdamW on
windows of 128 tokens. Every epoch re-orders the training documents (seeded) and cuts the token
stream anew, so windows start at different places. Training stops at ``--max-minutes`` of wall
time, at ``--max-steps``, or when the held-out loss has not improved for ``--patience``
evaluations; the checkpoint with the best held-out loss is kept.

Writes into ``--out``: ``config.json``, ``generation_config.json``, ``model.safetensors``,
``tokenizer.json``, ``heldout_sample.txt`` (the first 60 test documents), ``training_log.tsv``
(one line per step, and the evaluations) and ``results.json`` (held-out loss per token of the
model and of a unigram baseline, settings, timings).

Run from the repository root (single-threaded, seeded, deterministic on one machine); the
shipped model was made with::

    python3 scripts/train_tiny_lm.py --out sklearn_lib/data/tinylm --batch-size 16 \
        --max-steps 1700 --warmup-steps 50 --eval-every 50 --eval-windows 64 --patience 6 \
        --max-minutes 44
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn_lib.tasks._text import load_fortunes, make_token_windows, split_documents  # noqa: E402

EOT = "<|endoftext|>"


def train_tokenizer(documents: list[str], vocab_size: int):
    """Byte-level BPE trained on ``documents`` with ``<|endoftext|>`` as its only special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer=trainer)
    return tok


def write_heldout_sample(test_docs: list[str], path: Path, n_documents: int = 60) -> None:
    """The first test documents in the fortune format (``%`` lines between them).

    Shipped beside the model so that its held-out loss can be checked where the fortunes are
    not installed (``load_fortunes(tiny_lm_dir(), files=["heldout_sample.txt"])``).
    """
    path.write_text("\n%\n".join(test_docs[:n_documents]) + "\n%\n", encoding="utf-8")


def unigram_loss(train_tokens: np.ndarray, test_labels: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats per token) of add-one-smoothed training unigram frequencies."""
    counts = np.bincount(train_tokens, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[test_labels].mean())


@torch.no_grad()
def heldout_loss(model, windows: torch.Tensor, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats) over every position of ``windows``."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        x = windows[i : i + batch_size]
        logits = model(input_ids=x).logits[:, :-1].double()
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
        ).item()
        count += x[:, 1:].numel()
    model.train()
    return total / count


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="sklearn_lib/data/tinylm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--n-positions", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=8)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--min-lr", type=float, default=3e-4)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=3000)
    p.add_argument("--max-minutes", type=float, default=40.0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-windows", type=int, default=128)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--fortunes", default=None, help="directory of the fortune files")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)
    from transformers import GPT2Config, GPT2LMHeadModel

    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_docs, test_docs = split_documents(
        load_fortunes(args.fortunes), test_size=0.1, random_state=0
    )
    tok = train_tokenizer(train_docs, args.vocab_size)
    eot = tok.token_to_id(EOT)
    V = tok.get_vocab_size()
    train_ids = [e.ids for e in tok.encode_batch(train_docs, add_special_tokens=False)]
    X_test = torch.from_numpy(make_token_windows(test_docs, tok, args.n_positions))
    X_eval = X_test[: args.eval_windows]
    n_train_tokens = sum(len(d) + 1 for d in train_ids)
    train_stream = np.fromiter((t for d in train_ids for t in (*d, eot)), dtype=np.int64)
    baseline = unigram_loss(train_stream, X_test[:, 1:].reshape(-1).numpy(), V)

    config = GPT2Config(
        vocab_size=V,
        n_positions=args.n_positions,
        n_embd=args.d_model,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_inner=4 * args.d_model,
        activation_function="gelu_new",
        resid_pdrop=args.dropout,
        embd_pdrop=args.dropout,
        attn_pdrop=args.dropout,
        layer_norm_epsilon=1e-5,
        bos_token_id=eot,
        eos_token_id=eot,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < args.warmup_steps:
            return args.lr * (step + 1) / args.warmup_steps
        frac = min(1.0, (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps))
        return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * frac))

    def epoch_windows() -> torch.Tensor:
        order = rng.permutation(len(train_ids))
        offset = int(rng.integers(args.n_positions))
        stream = np.fromiter(
            (t for i in order for t in (*train_ids[i], eot)), dtype=np.int64
        )[offset:]
        n = stream.size // args.n_positions
        w = stream[: n * args.n_positions].reshape(n, args.n_positions)
        return torch.from_numpy(w[rng.permutation(n)].copy())

    log_path = out / "training_log.tsv"
    log = log_path.open("w")
    log.write(f"# {json.dumps(vars(args))}\n# n_params={n_params} vocab={V} "
              f"train_tokens={n_train_tokens} test_windows={len(X_test)} "
              f"unigram_heldout={baseline:.4f}\n")
    log.write("kind\tstep\tepoch\tloss\tlr\telapsed_s\n")
    best = (float("inf"), -1, None)
    evals_since_best = 0
    step, epoch, stop_reason = 0, 0, "max_steps"
    init_eval = heldout_loss(model, X_eval)
    log.write(f"eval\t0\t0\t{init_eval:.5f}\t0\t{time.perf_counter() - start:.1f}\n")
    model.train()
    while step < args.max_steps:
        windows = epoch_windows()
        epoch += 1
        for i in range(0, len(windows) - args.batch_size + 1, args.batch_size):
            x = windows[i : i + args.batch_size]
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = model(input_ids=x, labels=x).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            elapsed = time.perf_counter() - start
            log.write(f"train\t{step}\t{epoch}\t{loss.item():.5f}\t{lr_at(step - 1):.6f}\t"
                      f"{elapsed:.1f}\n")
            if step % args.eval_every == 0:
                ev = heldout_loss(model, X_eval)
                log.write(f"eval\t{step}\t{epoch}\t{ev:.5f}\t{lr_at(step - 1):.6f}\t"
                          f"{time.perf_counter() - start:.1f}\n")
                log.flush()
                print(f"step {step} epoch {epoch} train {loss.item():.4f} heldout {ev:.4f} "
                      f"({elapsed / 60:.1f} min)", flush=True)
                if ev < best[0] - 1e-4:
                    best = (ev, step, {k: v.detach().clone() for k, v in model.state_dict().items()})
                    evals_since_best = 0
                else:
                    evals_since_best += 1
                if evals_since_best >= args.patience:
                    stop_reason = "held-out loss converged"
                    break
            if elapsed > 60 * args.max_minutes:
                stop_reason = "time"
                break
            if step >= args.max_steps:
                break
        if stop_reason != "max_steps":
            break
    if best[2] is not None:
        model.load_state_dict(best[2])
    model.eval()
    final = heldout_loss(model, X_test)
    train_time = time.perf_counter() - start
    log.write(f"# stop: {stop_reason} at step {step}; best eval step {best[1]}; "
              f"held-out loss on all {len(X_test)} test windows {final:.5f}\n")
    log.close()
    model.save_pretrained(out)
    tok.save(str(out / "tokenizer.json"))
    write_heldout_sample(test_docs, out / "heldout_sample.txt")
    results = {
        "heldout_loss_per_token": final,
        "unigram_heldout_loss_per_token": baseline,
        "initial_heldout_loss_per_token": init_eval,
        "best_eval_step": best[1],
        "steps": step,
        "epochs": epoch,
        "stop_reason": stop_reason,
        "train_seconds": round(train_time, 1),
        "n_parameters": n_params,
        "vocab_size": V,
        "n_train_tokens": n_train_tokens,
        "n_test_windows": len(X_test),
        "n_positions": args.n_positions,
        "text": "Debian fortunes (all files but ascii-art), document split test_size=0.1 seed 0",
        "command": "python3 scripts/train_tiny_lm.py " + " ".join(argv or sys.argv[1:]),
        "settings": vars(args),
        "torch": torch.__version__,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in list(results)[:9]}, indent=2))
    return results


if __name__ == "__main__":
    main()
