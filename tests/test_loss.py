"""clip_loss against a straightforward reference (explicit loops over rows and pairings)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mammoclip.train.loss import clip_loss, duplicate_mask, masked_cross_entropy

B, D = 5, 8


def embeddings(seed: int = 0, n: int = B):
    g = torch.Generator().manual_seed(seed)
    return [
        F.normalize(torch.randn(n, D, generator=g, dtype=torch.float64), dim=-1).float() for _ in range(4)
    ]


def row_ce(a, b, scale, i, excluded=frozenset(), smoothing=0.0):
    """-log softmax of row i of scale * a @ b.T at column i, columns in ``excluded`` left out."""
    cols = [j for j in range(b.shape[0]) if j == i or j not in excluded]
    logits = [scale * float(a[i] @ b[j]) for j in cols]
    top = max(logits)
    lse = top + math.log(sum(math.exp(v - top) for v in logits))
    nll = lse - logits[cols.index(i)]
    uniform = sum(lse - v for v in logits) / len(logits)
    return (1 - smoothing) * nll + smoothing * uniform


def ref_ce(a, b, scale, dup=None, smoothing=0.0):
    n = a.shape[0]
    return (
        sum(row_ce(a, b, scale, i, {j for j in range(n) if dup and dup(i, j)}, smoothing) for i in range(n))
        / n
    )


def reference(I1, T1, I2=None, T2=None, *, scale, i2i_w=1.0, t2t_w=0.5, dup=None, smoothing=0.0):
    images = [I1] + ([I2] if I2 is not None else [])
    texts = [T1] + ([T2] if T2 is not None else [])
    pairs = [(i, t) for t in texts for i in images]
    i2t = sum(ref_ce(i, t, scale, dup, smoothing) for i, t in pairs) / len(pairs)
    t2i = sum(ref_ce(t, i, scale, dup, smoothing) for i, t in pairs) / len(pairs)
    i2i = (
        (ref_ce(I1, I2, scale, None, smoothing) + ref_ce(I2, I1, scale, None, smoothing)) / 2
        if I2 is not None
        else 0
    )
    t2t = (
        (ref_ce(T2, T1, scale, dup, smoothing) + ref_ce(T1, T2, scale, dup, smoothing)) / 2
        if T2 is not None
        else 0
    )
    return {
        "loss": (i2t + t2i) / 2 + i2i_w * i2i + t2t_w * t2t,
        "i2t": i2t,
        "t2i": t2i,
        "i2i": i2i,
        "t2t": t2t,
    }


def check(got, want, tol=1e-5):
    for key in ("loss", "i2t", "t2i", "i2i", "t2t"):
        assert float(got[key]) == pytest.approx(float(want[key]), abs=tol), key


@pytest.mark.parametrize("view", [True, False])
@pytest.mark.parametrize("second_text", [True, False])
def test_matches_reference(view, second_text):
    I1, T1, I2, T2 = embeddings(1)
    scale = 1 / 0.07
    got = clip_loss(
        I1,
        T1,
        image_view=I2 if view else None,
        text2=T2 if second_text else None,
        logit_scale=torch.tensor(scale),
    )
    want = reference(I1, T1, I2 if view else None, T2 if second_text else None, scale=scale)
    check(got, want)
    if not view:
        assert float(got["i2i"]) == 0.0
    if not second_text:
        assert float(got["t2t"]) == 0.0


def test_upstream_formula_spelled_out():
    """Section 5.1 literally: four pairings / 4 per direction, ICL and TCL halves, weights 1 and 0.5."""
    I1, T1, I2, T2 = embeddings(2)
    s = 14.0
    tgt = torch.arange(B)

    def ce(a, b):
        return F.cross_entropy(s * a @ b.t(), tgt)

    pairs = [(I1, T1), (I2, T1), (I1, T2), (I2, T2)]
    i2t = sum(ce(i, t) for i, t in pairs) / 4
    t2i = sum(ce(t, i) for i, t in pairs) / 4
    icl = (ce(I1, I2) + ce(I2, I1)) / 2
    tcl = (ce(T2, T1) + ce(T1, T2)) / 2
    got = clip_loss(I1, T1, image_view=I2, text2=T2, logit_scale=s)
    assert torch.allclose(got["loss"], (i2t + t2i) / 2 + icl + 0.5 * tcl, atol=1e-6)
    got = clip_loss(I1, T1, image_view=I2, text2=T2, logit_scale=s, i2i_weight=0.3, t2t_weight=2.0)
    assert torch.allclose(got["loss"], (i2t + t2i) / 2 + 0.3 * icl + 2.0 * tcl, atol=1e-6)
    # one view, one text: the symmetric CLIP loss
    got = clip_loss(I1, T1, logit_scale=s)
    assert torch.allclose(got["loss"], (ce(I1, T1) + ce(T1, I1)) / 2, atol=1e-6)


def test_label_smoothing_matches_cross_entropy():
    I1, T1, I2, T2 = embeddings(3)
    got = clip_loss(I1, T1, image_view=I2, text2=T2, logit_scale=10.0, label_smoothing=0.1)
    check(got, reference(I1, T1, I2, T2, scale=10.0, smoothing=0.1))
    logits = torch.randn(4, 6)
    tgt = torch.tensor([0, 3, 1, 5])
    assert torch.allclose(
        masked_cross_entropy(logits, tgt, mask=torch.zeros(4, 6, dtype=torch.bool), label_smoothing=0.2),
        F.cross_entropy(logits, tgt, label_smoothing=0.2),
        atol=1e-6,
    )


def test_false_negative_hand_case():
    """Samples 0 and 1 have the same report: their cross logits leave the softmax (not the diagonal)."""
    # 2-d embeddings: image 0 is as close to text 1 as to its own text, so unmasked it is penalised
    I1 = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]), dim=-1)
    T1 = F.normalize(torch.tensor([[1.0, 0.05], [1.0, 0.05], [-1.0, 1.0]]), dim=-1)
    ids = torch.tensor([42, 42, 7])
    s = 10.0
    plain = clip_loss(I1, T1, logit_scale=s)
    masked = clip_loss(I1, T1, logit_scale=s, text_ids=ids, mask_false_negatives=True)

    def by_hand(a, b):
        # row 0 sees columns {0, 2}, row 1 sees {1, 2}, row 2 sees all
        keep = [[0, 2], [1, 2], [0, 1, 2]]
        total = 0.0
        for i, cols in enumerate(keep):
            logits = torch.stack([s * a[i] @ b[j] for j in cols])
            total += -torch.log_softmax(logits, 0)[cols.index(i)]
        return total / 3

    assert torch.allclose(masked["i2t"], by_hand(I1, T1), atol=1e-6)
    assert torch.allclose(masked["t2i"], by_hand(T1, I1), atol=1e-6)
    assert float(masked["loss"]) < float(plain["loss"])
    assert duplicate_mask([ids], [ids], 0).tolist() == [
        [False, True, False],
        [True, False, False],
        [False, False, False],
    ]
    # all-distinct ids: masking changes nothing
    same = clip_loss(I1, T1, logit_scale=s, text_ids=torch.tensor([1, 2, 3]), mask_false_negatives=True)
    assert torch.allclose(same["loss"], plain["loss"])


def test_false_negative_masking_with_two_texts_and_views():
    """Duplicates by either text slot (sample 3's second text = sample 0's first); i2i stays unmasked."""
    I1, T1, I2, T2 = embeddings(4)
    ids1 = torch.tensor([10, 11, 10, 12, 13])
    ids2 = torch.tensor([20, 21, 22, 10, 24])
    sets = [{int(a), int(b)} for a, b in zip(ids1, ids2, strict=True)]

    def dup(i, j):
        return i != j and bool(sets[i] & sets[j])

    got = clip_loss(
        I1,
        T1,
        image_view=I2,
        text2=T2,
        logit_scale=12.0,
        text_ids=ids1,
        text2_ids=ids2,
        mask_false_negatives=True,
    )
    check(got, reference(I1, T1, I2, T2, scale=12.0, dup=dup))
    assert float(got["i2i"]) == pytest.approx(
        float(clip_loss(I1, T1, image_view=I2, logit_scale=12.0)["i2i"])
    )
    smoothed = clip_loss(
        I1,
        T1,
        image_view=I2,
        text2=T2,
        logit_scale=12.0,
        text_ids=ids1,
        text2_ids=ids2,
        mask_false_negatives=True,
        label_smoothing=0.1,
    )
    check(smoothed, reference(I1, T1, I2, T2, scale=12.0, dup=dup, smoothing=0.1))


def test_gradients_flow_and_float32():
    I1, T1, I2, T2 = (x.clone().half().requires_grad_() for x in embeddings(5))
    scale = torch.tensor(2.0, requires_grad=True)
    out = clip_loss(I1, T1, image_view=I2, text2=T2, logit_scale=scale.exp())
    assert out["loss"].dtype == torch.float32
    out["loss"].backward()
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in (I1, T1, I2, T2, scale))


def test_autocast_does_not_lower_the_loss_precision():
    I1, T1, I2, T2 = embeddings(7)
    plain = clip_loss(I1, T1, image_view=I2, text2=T2, logit_scale=20.0)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        auto = clip_loss(I1, T1, image_view=I2, text2=T2, logit_scale=20.0)
    assert auto["loss"].dtype == torch.float32
    assert all(torch.equal(plain[k], auto[k]) for k in plain)


def test_input_checks():
    I1, T1, _, _ = embeddings(6)
    with pytest.raises(ValueError, match="shape"):
        clip_loss(I1, T1[:3], logit_scale=1.0)
    with pytest.raises(ValueError, match="text_ids"):
        clip_loss(I1, T1, logit_scale=1.0, mask_false_negatives=True)
