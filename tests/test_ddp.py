"""DDP equivalence on the CPU: 2 gloo processes with batch B each == 1 process with batch 2B.

One spawn (module fixture) runs three checks on both ranks and rank 0 saves the results:

1. ``clip_loss`` on fixed embeddings (both views, both texts, false-negative masking with duplicate ids
   across ranks): the mean of the ranks' losses equals the single-process loss of the whole batch, and the
   gradient of each rank's own embedding rows divided by the world size (what DDP's gradient averaging
   applies) equals the single-process gradient of those rows; ``logit_scale``'s averaged gradient likewise.
2. One forward/backward of a tiny CLIP model wrapped in DDP: the averaged parameter gradients equal those of
   one process on the whole batch.
3. ``train_clip`` for 2 epochs (4 optimiser steps, AdamW, cosine schedule, masking): parameters in
   ``last.pt`` and the logged train/val losses equal the single-process run with twice the batch. This
   check runs in float64: AdamW divides each gradient by its own magnitude, so float32 round-off in
   gradients that are mathematically zero (BERT's attention key biases: softmax is shift-invariant) becomes
   a full ``±lr`` step in either run, and parameters then differ by ~3e-5 after 4 steps for that reason
   alone. In float64 that noise stays far below Adam's eps.

Exactness needs a model whose per-sample outputs do not depend on how the batch is split: BatchNorm in
train mode normalises with the statistics of the local batch and dropout draws different masks, so checks
2 and 3 use a BN-free conv image encoder and a BERT with dropout 0 (``tiny_clip(exact=True)``). The
remaining differences are float32 summation order (observed ~1e-7; asserted to 1e-5).
"""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch
import torch.nn.functional as F
from test_trainer import Collate, PairDataset, cpu_config, read_metrics, tiny_clip

WORLD = 2
B = 3  # per rank in checks 1 and 2
TOL = 1e-5  # float32 checks
TOL64 = 1e-10  # the float64 training run


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fixed_embeddings():
    g = torch.Generator().manual_seed(11)
    embs = [F.normalize(torch.randn(WORLD * B, 16, generator=g), dim=-1) for _ in range(4)]
    ids1 = torch.tensor([5, 6, 7, 5, 8, 9])  # sample 0 (rank 0) and sample 3 (rank 1) share a text
    ids2 = torch.tensor([15, 16, 6, 18, 19, 20])  # sample 2's second text = sample 1's first
    return embs, ids1, ids2


def embedding_loss(embs, ids1, ids2, scale):
    from mammoclip.train.loss import clip_loss

    I1, T1, I2, T2 = embs
    return clip_loss(
        I1,
        T1,
        image_view=I2,
        text2=T2,
        logit_scale=scale,
        text_ids=ids1,
        text2_ids=ids2,
        mask_false_negatives=True,
    )


def model_batch(tok):
    data = PairDataset(WORLD * B, seed=7)
    return Collate(tok)([data[i] for i in range(len(data))])


def model_loss(model, batch):
    from mammoclip.train.loss import clip_loss

    out = model(
        batch["images"],
        batch["input_ids"],
        batch["attention_mask"],
        images2=batch["images2"],
        input_ids2=batch["input_ids2"],
        attention_mask2=batch["attention_mask2"],
    )
    return clip_loss(
        out["image_embeddings"],
        out["text_embeddings"],
        image_view=out["image_view_embeddings"],
        text2=out["text_embeddings2"],
        logit_scale=out["logit_scale"],
        text_ids=batch["text_ids"],
        text2_ids=batch["text2_ids"],
        mask_false_negatives=True,
    )


def train_data():
    return PairDataset(8, seed=8, dtype=torch.float64), PairDataset(6, seed=9, dtype=torch.float64)


def train_config(batch_size: int):
    return cpu_config(
        epochs=2, batch_size=batch_size, val_batch_size=batch_size, warmup_epochs=0, mask_false_negatives=True
    )


def _worker(rank: int, port: int, out_dir: str, bert_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    from mammoclip.train import distributed as du
    from mammoclip.train.pretrain import train_clip

    info = du.init_distributed()
    assert info.world_size == WORLD and info.rank == rank and info.device.type == "cpu"
    mine = slice(rank * B, (rank + 1) * B)
    results = {}

    # 1. the loss on fixed embeddings
    embs, ids1, ids2 = fixed_embeddings()
    local = [e[mine].clone().requires_grad_() for e in embs]
    scale = torch.tensor(2.5, requires_grad=True)
    out = embedding_loss(local, ids1[mine], ids2[mine], scale.exp())
    out["loss"].backward()
    results["emb_terms"] = {k: du.reduce_mean(v.detach()) for k, v in out.items()}
    per_rank = du.all_gather_object([x.grad for x in local])  # [rank][embedding]
    results["emb_grads"] = [torch.cat([per_rank[r][e] for r in range(WORLD)]) for e in range(len(local))]
    results["scale_grad"] = du.reduce_mean(scale.grad)

    # 2. one DDP backward of the exact tiny model
    model, tok = tiny_clip(bert_dir, exact=True)
    model.text_encoder.text_encoder.pooler.requires_grad_(False)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    batch = {k: v[mine] for k, v in model_batch(tok).items()}
    losses = model_loss(ddp, batch)
    losses["loss"].backward()
    results["model_loss"] = du.reduce_mean(losses["loss"].detach())
    results["model_grads"] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    # 3. train_clip (float64, see the module docstring)
    model, tok = tiny_clip(bert_dir, exact=True)
    model.double()
    ddp_dir = os.path.join(out_dir, "ddp")
    train_clip(
        model, tok, *train_data(), Collate(tok), out_dir=ddp_dir, config=train_config(B - 1), metadata={}
    )
    if rank == 0:
        torch.save(results, os.path.join(out_dir, "results.pt"))
    du.barrier()
    du.cleanup()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_bert_dir):
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ddp")
    start = time.perf_counter()
    ctx = mp.start_processes(
        _worker,
        args=(free_port(), str(out), str(tiny_bert_dir)),
        nprocs=WORLD,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("DDP workers did not finish within 240 s")
    print(f"DDP workers took {time.perf_counter() - start:.1f} s")
    return out, torch.load(out / "results.pt", weights_only=False)


def max_diff(a, b) -> float:
    return float((a - b).abs().max())


def test_loss_and_embedding_gradients_match_single_process(ddp_run):
    _, res = ddp_run
    embs, ids1, ids2 = fixed_embeddings()
    full = [e.clone().requires_grad_() for e in embs]
    scale = torch.tensor(2.5, requires_grad=True)
    out = embedding_loss(full, ids1, ids2, scale.exp())
    out["loss"].backward()
    loss_diff = max(max_diff(res["emb_terms"][k], v.detach()) for k, v in out.items())
    # each rank minimises its rows' mean; DDP averages gradients over the ranks -> divide by WORLD
    grad_diff = max(max_diff(got / WORLD, x.grad) for got, x in zip(res["emb_grads"], full, strict=True))
    scale_diff = max_diff(res["scale_grad"], scale.grad)
    print(f"fixed embeddings: loss {loss_diff:.3g}, grads {grad_diff:.3g}, logit_scale {scale_diff:.3g}")
    assert loss_diff < TOL and grad_diff < TOL and scale_diff < TOL
    assert float(out["t2i"].detach()) > 0 and float(res["emb_terms"]["i2i"]) > 0


def test_ddp_backward_matches_single_process(ddp_run, tiny_bert_dir):
    _, res = ddp_run
    model, tok = tiny_clip(tiny_bert_dir, exact=True)
    model.text_encoder.text_encoder.pooler.requires_grad_(False)
    losses = model_loss(model, model_batch(tok))
    losses["loss"].backward()
    loss_diff = max_diff(res["model_loss"], losses["loss"].detach())
    print(f"DDP backward: |loss difference| = {loss_diff:.3g}")
    assert loss_diff < TOL
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == res["model_grads"].keys()
    worst = max(max_diff(res["model_grads"][n], g) for n, g in grads.items())
    print(f"DDP backward: max |grad difference| = {worst:.3g}")
    assert worst < TOL, worst


def test_train_clip_ddp_matches_single_process(ddp_run, tiny_bert_dir, tmp_path):
    from mammoclip.train.pretrain import load_train_state, train_clip

    out, _ = ddp_run
    model, tok = tiny_clip(tiny_bert_dir, exact=True)
    model.double()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    train_clip(
        model,
        tok,
        *train_data(),
        Collate(tok),
        out_dir=tmp_path,
        config=train_config(WORLD * (B - 1)),
        metadata={},
    )
    ddp_state, single_state = (
        load_train_state(out / "ddp" / "last.pt"),
        load_train_state(tmp_path / "last.pt"),
    )
    assert ddp_state["world_size"] == WORLD and ddp_state["global_step"] == single_state["global_step"] == 4
    ref, got = single_state["model"], ddp_state["model"]
    worst = max(max_diff(got[k].double(), ref[k].double()) for k in ref)
    print(f"train_clip (float64): max |param difference| DDP vs single after 4 steps = {worst:.3g}")
    assert worst < TOL64, worst
    assert max(max_diff(ref[k].double(), initial[k].double()) for k in ref) > 1e-3  # training moved them
    ddp_rows, single_rows = read_metrics(out / "ddp" / "metrics.csv"), read_metrics(tmp_path / "metrics.csv")
    assert [(r["epoch"], r["step"], r["split"]) for r in ddp_rows] == [
        (r["epoch"], r["step"], r["split"]) for r in single_rows
    ]
    for a, b in zip(ddp_rows, single_rows, strict=True):
        for key in ("loss", "i2t", "t2i", "i2i", "t2t", "lr", "logit_scale"):
            # the logged values are float32 (reduced over ranks in float32)
            assert float(a[key]) == pytest.approx(float(b[key]), abs=TOL), (a["split"], key)
