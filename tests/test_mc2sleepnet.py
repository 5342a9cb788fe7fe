"""MC²SleepNet: spectrogram parity, backbone shapes, cross-masking, losses, freezing, trainability, registry.

All CPU and fast; the paper-size model is only built (and run on a handful of epochs for shapes).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal as sps
import torch

from distsleep.augment import RAW_AUGMENTATIONS, RawAugmentConfig, augment_raw, augment_spectrogram, time_shift, zero_mask
from distsleep.models import UnknownModelError, build_model, list_models, model_config_class, resolve_channels
from distsleep.models.common import across_workers, count_parameters, masked_cross_entropy
from distsleep.models.mc2sleepnet import (
    MC2SleepNet,
    MC2SleepNetConfig,
    RawBackbone,
    SpectrogramBackbone,
    info_nce,
    n_masked,
)
from distsleep.spectrogram import scipy_spectrogram, torch_spectrogram

PAPER_PARAMS = 5.76e6


def _epochs(*shape: int, seed: int = 0) -> np.ndarray:
    """Random EEG-like epochs in µV: white noise plus a 10 Hz and a 1.5 Hz component."""
    rng = np.random.default_rng(seed)
    t = np.arange(shape[-1]) / 100.0
    return 20 * rng.standard_normal(shape) + 30 * np.sin(2 * np.pi * 10 * t) + 50 * np.sin(2 * np.pi * 1.5 * t + 0.3)


def _small_model(**overrides) -> MC2SleepNet:
    torch.manual_seed(0)
    return MC2SleepNet(MC2SleepNetConfig.small(**overrides))


# ------------------------------------------------------------------------------------------- spectrogram


def test_scipy_reference_is_plain_fft_magnitude():
    """The reference equals scipy.signal.stft once SciPy's 1/sum(window) scaling is undone."""
    x = _epochs(3, 3000)
    window = sps.windows.hamming(200, sym=True)
    _, _, z = sps.stft(x, window=window, nperseg=200, noverlap=100, nfft=256, boundary=None, padded=False)
    expected = 20 * np.log10(np.abs(z) * window.sum() + 1e-6).swapaxes(-1, -2)
    got = scipy_spectrogram(x)
    assert got.shape == (3, 29, 129)
    np.testing.assert_allclose(got, expected, atol=1e-9)


@pytest.mark.parametrize("kind", ["random", "sine", "chirp"])
def test_torch_spectrogram_matches_scipy(kind):
    t = np.arange(3000) / 100.0
    if kind == "random":
        x = _epochs(3000, seed=1)
    elif kind == "sine":
        x = 40 * np.sin(2 * np.pi * 12.5 * t)
    else:
        x = 25 * sps.chirp(t, f0=0.5, t1=30, f1=45)
    ref = scipy_spectrogram(x)
    got = torch_spectrogram(torch.tensor(x, dtype=torch.float32)).numpy()
    assert ref.shape == got.shape == (29, 129)
    # float32 vs float64: compare bins within 60 dB of the peak (|X| > 1e-3 of the largest magnitude);
    # deeper spectral nulls are float32 rounding noise. The float64 path is compared everywhere below.
    strong = ref > ref.max() - 60.0
    assert strong.mean() > 0.3
    assert np.abs(got - ref)[strong].max() < 1e-3
    got64 = torch_spectrogram(torch.tensor(x, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got64, ref, atol=1e-6)
    # The spectrogram carries the signal: a pure sine peaks at its own bin (12.5 Hz → bin 32 of 0.39 Hz).
    if kind == "sine":
        assert set(ref.argmax(axis=1)) == {32}


def test_torch_spectrogram_batched_and_float64():
    x = _epochs(2, 3, 3000, seed=2)
    got32 = torch_spectrogram(torch.tensor(x, dtype=torch.float32))
    got64 = torch_spectrogram(torch.tensor(x))
    assert got32.shape == (2, 3, 29, 129) and got32.dtype == torch.float32
    assert got64.dtype == torch.float64
    ref = scipy_spectrogram(x)
    np.testing.assert_allclose(got64.numpy(), ref, atol=1e-8)
    assert np.abs(got32.numpy() - ref).max() < 1e-3
    # Each epoch is transformed on its own.
    np.testing.assert_allclose(got64[1, 2].numpy(), scipy_spectrogram(x[1, 2]), atol=1e-8)


# ------------------------------------------------------------------------------------------- backbones


def test_backbone_shapes_at_paper_size():
    cfg = MC2SleepNetConfig()
    torch.manual_seed(0)
    raw = RawBackbone(cfg).eval()
    x = torch.randn(6, 1, 3000)  # B·L = 2·3
    shapes = []
    h = x
    with torch.no_grad():
        for block in raw.blocks:
            h = block(h)
            shapes.append(tuple(h.shape[1:]))
        tokens = raw(x)
    assert shapes == [(64, 3000), (128, 600), (192, 120), (256, 24), (256, 5)]
    assert tokens.shape == (6, 5, 128)
    assert cfg.raw_tokens == 5
    spec = SpectrogramBackbone(cfg).eval()
    with torch.no_grad():
        z = spec(torch_spectrogram(x * 20))
    assert z.shape == (6, 29, 128)


def test_parameter_count_paper_size():
    model = build_model("mc2sleepnet")
    counts = count_parameters(model)
    print(f"\nMC2SleepNet paper size:\n{counts}")
    print(f"small(): {count_parameters(build_model('mc2sleepnet', MC2SleepNetConfig.small())).total:,}")
    assert abs(counts.total - PAPER_PARAMS) / PAPER_PARAMS < 0.10
    assert 1.5e6 < counts.by_module["raw_backbone"] < 1.65e6  # DESIGN §5: ~1.58 M


# ------------------------------------------------------------------------------------------- masking

# The authors' count: int(L·(1−r)) visible, the rest masked. At 15/25/30/40 % this differs from round(L·r)
# (3/5/6/8), which is what the previous reading masked.
EXPECTED_MASKED_OF_21 = {0.0: 0, 0.15: 4, 0.25: 6, 0.30: 7, 0.40: 9, 0.5: 11, 0.60: 13, 0.70: 15, 0.75: 16, 0.85: 18}


@pytest.mark.parametrize("ratio", sorted(EXPECTED_MASKED_OF_21))
def test_cross_masking_expanded_batch_pairs_each_masked_view_with_a_complete_one(ratio):
    model = _small_model()
    b, l, d = 16, 21, model.cfg.d_model
    k = EXPECTED_MASKED_OF_21[ratio]
    assert n_masked(l, ratio) == k == l - int(l * (1 - ratio) + 1e-9)
    o_sg, o_sp = torch.randn(b, l, d), torch.randn(b, l, d)
    g = torch.Generator().manual_seed(1)
    sg, sp, m_sg, m_sp = model.cross_masked_batch(o_sg, o_sp, ratio, generator=g)
    # Every sequence twice: rows [0, B) have Sg masked and Sp complete, rows [B, 2B) the reverse.
    assert sg.shape == sp.shape == (2 * b, l, d) and m_sg.shape == m_sp.shape == (2 * b, l)
    assert not (m_sg & m_sp).any()  # no epoch masked in both views of one pass
    assert (m_sg[:b].sum(dim=1) == k).all() and not m_sg[b:].any()
    assert (m_sp[b:].sum(dim=1) == k).all() and not m_sp[:b].any()
    assert torch.equal(sp[:b], o_sp) and torch.equal(sg[b:], o_sg)
    token = model.mask_token.detach()
    for out, mask, orig in ((sg[:b], m_sg[:b], o_sg), (sp[b:], m_sp[b:], o_sp)):
        assert torch.equal(out[mask], token.expand(int(mask.sum()), d))
        assert torch.equal(out[~mask], orig[~mask])
    if 0 < k < l:
        # Independent positions per pass and per sequence.
        assert not torch.equal(m_sg[:b], m_sp[b:])
        assert len({tuple(row.tolist()) for row in m_sg[:b]}) > 1
        # One shared parameter: both passes' masked positions send gradient into the same token.
        (sg.sum() + 2 * sp.sum()).backward()
        assert torch.allclose(model.mask_token.grad, torch.full((d,), float(m_sg.sum() + 2 * m_sp.sum())))


def test_masking_only_in_pretrain_training_on_the_expanded_batch():
    model = _small_model(seq_len=7, mask_ratio=0.5)
    x = torch.tensor(_epochs(2, 7, 1, 3000), dtype=torch.float32)
    y = torch.tensor([[0, 1, 2, 3, 4, 2, 2], [4, 3, 2, 1, 0, -1, 2]])
    captured = {}
    model.sg_layers[0].register_forward_pre_hook(lambda mod, args: captured.update(sg=args[0].detach(), sp=args[1].detach()))
    model.train()
    out = model(x, y, stage="pretrain")
    k = 7 - int(7 * 0.5)
    assert k == 4
    assert out["logits"].shape == out["logits_sg"].shape == (4, 7, 5)
    assert (out["mask_sg"][:2].sum(1) == k).all() and (out["mask_sp"][2:].sum(1) == k).all()
    assert not (out["mask_sg"] & out["mask_sp"]).any()
    assert out["mask_ratio_effective"].item() == pytest.approx(k / 7)
    # The sequence stack sees the mask token (plus the positional encoding) at the masked positions, and
    # the complete view of the other modality in the same pass.
    from distsleep.models.common import sinusoidal_positional_encoding

    pe = sinusoidal_positional_encoding(7, model.cfg.d_model)
    expected = (model.mask_token.detach() + pe).expand(4, -1, -1)
    mask = out["mask_sg"]
    assert torch.allclose(captured["sg"][mask], expected[mask], atol=1e-6)
    assert torch.allclose(captured["sg"][:2][~mask[:2]], captured["sg"][2:][~mask[:2]])  # same sequences twice
    for stage in ("finetune", "eval"):
        out = model(x, stage=stage)
        assert out["logits"].shape == (2, 7, 5)
        assert not out["mask_sg"].any() and not out["mask_sp"].any()
        assert out["mask_ratio_effective"].item() == 0.0
    model.eval()
    assert not model(x, stage="pretrain")["mask_sg"].any()
    model.train()
    no_mask = _small_model(seq_len=7, mask_ratio=0.0).train()
    assert no_mask(x, stage="pretrain")["logits"].shape == (2, 7, 5)


# --------------------------------------------------------------------------------------------- losses


def _gathered_info_nce(rank: int, world: int, init_file: str, z_a, z_b, queue) -> None:
    """One data-parallel worker (a real gloo process group): its share of the batch, gathered, then InfoNCE."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    rows = z_a.shape[0] // world
    a, b = (z[rank * rows:(rank + 1) * rows].clone().requires_grad_() for z in (z_a, z_b))
    gathered = info_nce(*across_workers(a, b), 0.1)
    gathered.backward()
    queue.put((rank, gathered.item(), info_nce(a.detach(), b.detach(), 0.1).item(), a.grad, b.grad))
    dist.destroy_process_group()


def test_contrastive_negatives_come_from_the_global_batch_across_workers(tmp_path):
    """Two gloo workers holding half of a batch each get the one-process loss of the whole batch, and gradients
    whose data-parallel mean is that loss's gradient (their own loss alone would see half the negatives)."""
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    z_a, z_b = torch.randn(4, 3, 8), torch.randn(4, 3, 8)
    full_a, full_b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    whole = info_nce(full_a, full_b, 0.1)
    whole.backward()
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    workers = [context.Process(target=_gathered_info_nce, args=(r, 2, str(tmp_path / "init"), z_a, z_b, queue))
               for r in range(2)]
    for worker in workers:
        worker.start()
    results = sorted(queue.get() for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    for rank, gathered, alone, grad_a, grad_b in results:
        assert gathered == pytest.approx(whole.item(), rel=1e-5)
        assert abs(alone - whole.item()) > 1e-3  # what each worker computed before: other negatives
        rows = slice(2 * rank, 2 * rank + 2)
        # Each worker's gradient is the sum over ranks; the data-parallel mean (/ 2) is the whole batch's.
        assert torch.allclose(grad_a / 2, full_a.grad[rows], atol=1e-6)
        assert torch.allclose(grad_b / 2, full_b.grad[rows], atol=1e-6)
    assert across_workers(z_a) == (z_a,)  # no process group: the tensors themselves


def test_info_nce_symmetric_and_prefers_aligned_views():
    torch.manual_seed(0)
    a = torch.randn(8, 5, 16)
    b = a + 0.1 * torch.randn_like(a)
    for negatives in ("position", "all"):
        aligned = info_nce(a, b, 0.1, negatives)
        assert torch.allclose(aligned, info_nce(b, a, 0.1, negatives))
        shuffled = info_nce(a, b[torch.randperm(8)], 0.1, negatives)
        assert aligned < 0.1 < shuffled
    # With a single sequence, Eq. 14's per-position negatives are empty: loss is log(1) = 0.
    assert info_nce(a[:1], b[:1], 0.1, "position").item() == pytest.approx(0.0, abs=1e-6)


def test_masked_cross_entropy_ignores_unscored_epochs():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 5)
    labels = torch.tensor([[0, 1, -1, 2, -1, 4], [3, -1, 2, 2, 1, 0]])
    base = masked_cross_entropy(logits, labels)
    changed = logits.clone()
    changed[labels == -1] = 100 * torch.randn(int((labels == -1).sum()), 5)
    assert torch.allclose(base, masked_cross_entropy(changed, labels))
    manual = torch.nn.functional.cross_entropy(logits[labels >= 0], labels[labels >= 0])
    assert torch.allclose(base, manual)
    all_unscored = masked_cross_entropy(logits.requires_grad_(), torch.full((2, 6), -1))
    assert all_unscored.item() == 0.0 and all_unscored.requires_grad


def _fixed_head(value: torch.Tensor):
    """A forward hook that makes a head return `value` (the same logits for every call)."""
    return lambda module, args, output: value.expand_as(output).clone().requires_grad_()


def test_loss_composition_eq18_eq19_hand_computed():
    """Fixed logits per head, hand-computed Eq. 18 (sum over a sequence's scored epochs, mean over sequences)
    and Eq. 19 (pre-training w1 = 1 on the raw-signal head, w2 = w3 = 0.1; fine-tuning 1/1/1)."""
    import math

    y = torch.tensor([[0, 1, -1, 2, 2], [4, 4, -1, -1, 0]])  # 4 + 3 = 7 scored epochs in 2 sequences
    uniform = torch.zeros(5)  # CE = log 5 on every epoch
    confident = torch.zeros(2, 5, 5)
    confident.scatter_(2, y.clamp(min=0)[..., None], 2.0)  # CE = log(4 + e²) − 2 on every scored epoch
    ce_uniform = math.log(5)
    ce_confident = math.log(4 + math.e ** 2) - 2
    ce_wrong = math.log(4 + math.e ** 2)  # a logit of 2 on class 3, never a label here
    wrong = torch.zeros(5)
    wrong[3] = 2.0
    seq_uniform, seq_confident, seq_wrong = (7 * c / 2 for c in (ce_uniform, ce_confident, ce_wrong))

    model = _small_model(infonce_weight=1.0).eval()
    model.head_sg.register_forward_hook(_fixed_head(uniform))
    model.head_sp.register_forward_hook(_fixed_head(confident))
    model.head_concat.register_forward_hook(_fixed_head(wrong))
    x = torch.tensor(_epochs(2, 5, 1, 3000, seed=9), dtype=torch.float32)

    pre = model(x, y, stage="pretrain")  # eval mode: no masking, one pass
    assert pre["loss_sg"].item() == pytest.approx(seq_uniform, rel=1e-5)
    assert pre["loss_sp"].item() == pytest.approx(seq_confident, rel=1e-5)
    assert pre["loss_concat"].item() == pytest.approx(seq_wrong, rel=1e-5)
    assert pre["loss_seq"].item() == pytest.approx(1.0 * seq_uniform + 0.1 * seq_confident + 0.1 * seq_wrong, rel=1e-5)
    assert pre["loss"].item() == pytest.approx(pre["loss_seq"].item() + pre["loss_infonce"].item(), rel=1e-6)
    fine = model(x, y, stage="finetune")
    assert fine["loss"].item() == pytest.approx(seq_uniform + seq_confident + seq_wrong, rel=1e-5)

    # The per-epoch mean is an option, not the default.
    mean_model = _small_model(sequence_loss="mean").eval()
    mean_model.head_sg.register_forward_hook(_fixed_head(uniform))
    assert mean_model(x, y, stage="pretrain")["loss_sg"].item() == pytest.approx(ce_uniform, rel=1e-5)
    from distsleep.models.mc2sleepnet import sequence_cross_entropy

    assert sequence_cross_entropy(torch.zeros(2, 5, 5), torch.full((2, 5), -1)).item() == 0.0


def test_table3_ablations_are_model_settings_selectable_with_set():
    """Each of Table 3's variants is a --set of the training CLI, and each changes the graph as it says."""
    import argparse

    from distsleep.cli.common import add_train_arguments, config_from_args
    from distsleep.train.inputs import model_config

    def built(*items: str) -> MC2SleepNet:
        parser = argparse.ArgumentParser()
        add_train_arguments(parser)
        argv = ["--shards", "/x/manifest.json", "--model-size", "small", "--seq-len", "5"]
        args = parser.parse_args(argv + (["--set", *items] if items else []))
        torch.manual_seed(0)
        return MC2SleepNet(model_config(config_from_args(args)))

    x = torch.tensor(_epochs(2, 5, 1, 3000, seed=11), dtype=torch.float32)
    y = torch.tensor([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]])

    raw_only = built("branches=raw", "sequence_level=false")
    assert raw_only.spec_backbone is None and raw_only.sg_layers is None and raw_only.head_concat is None
    spec_only = built("branches=spectrogram", "sequence_level=false")
    assert spec_only.raw_backbone is None and spec_only.inference_head == "head_sp"
    for single in (raw_only, spec_only):
        out = single.train()(x, y, stage="pretrain")
        assert out["loss_infonce"].item() == 0.0 and out["mask_ratio_effective"].item() == 0.0
        # "(single)": an epoch's prediction does not depend on its neighbours.
        single.eval()
        changed = x.clone()
        changed[:, 1:] = 3 * torch.tensor(_epochs(2, 4, 1, 3000, seed=12), dtype=torch.float32)
        with torch.no_grad():
            assert torch.allclose(single(x)["logits"][:, 0], single(changed)["logits"][:, 0], atol=1e-5)

    no_cl = built("contrastive=false").train()
    assert no_cl.raw_projection is None
    out = no_cl(x, y, stage="pretrain")
    assert out["loss_infonce"].item() == 0.0 and torch.allclose(out["loss"], out["loss_seq"])
    assert out["logits"].shape[0] == 4  # still cross-masked on the expanded batch

    no_cross = built("cross_attention=false")
    assert all(layer.cross_attn is None for layer in [*no_cross.sg_layers, *no_cross.sp_layers])
    no_cross.eval()
    with torch.no_grad():  # the raw-signal stream no longer sees the spectrogram stream
        o_sg, o_sp = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
        t_sg, _ = no_cross.sequence(o_sg, o_sp)
        assert torch.allclose(t_sg, no_cross.sequence(o_sg, torch.randn(2, 5, 32))[0])
    full = built().eval()
    with torch.no_grad():
        assert not torch.allclose(full.sequence(o_sg, o_sp)[0], full.sequence(o_sg, torch.randn(2, 5, 32))[0])
    with pytest.raises(ValueError, match="branches"):
        MC2SleepNetConfig(branches="eeg")
    with pytest.raises(ValueError, match="contrastive must be true or false"):
        MC2SleepNetConfig(contrastive="no")


# ------------------------------------------------------------------------------------------- training


def test_freeze_backbones_finetune_changes_only_sequence_part():
    model = _small_model()
    model.freeze_backbones()
    frozen = [m for m in model.epoch_level_modules()]
    for module in frozen:
        assert all(not p.requires_grad for p in module.parameters())
    model.train()
    assert all(not m.training for m in frozen) and model.sg_layers.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.tensor(_epochs(2, 5, 1, 3000, seed=3), dtype=torch.float32)
    y = torch.tensor([[0, 1, 2, 3, 4], [2, 2, 2, 3, 4]])
    loss = model(x, y, stage="finetune")["loss"]
    loss.backward()
    opt.step()
    after = model.state_dict()
    epoch_prefixes = ("raw_backbone", "spec_backbone", "raw_attention", "spec_attention", "raw_projection", "spec_projection")
    for key, value in before.items():
        if key.startswith(epoch_prefixes):  # parameters *and* BatchNorm running statistics
            assert torch.equal(value, after[key]), key
    changed = [k for k, v in before.items() if not k.startswith(epoch_prefixes) and not torch.equal(v, after[k])]
    assert any(k.startswith("sg_layers") for k in changed) and any(k.startswith("sp_layers") for k in changed)
    assert any(k.startswith("head_concat") for k in changed)
    model.unfreeze_backbones()
    assert all(p.requires_grad for p in model.parameters()) and model.raw_backbone.training


def test_small_model_overfits_a_fixed_batch():
    model = _small_model(dropout=0.0, augment=False, mask_ratio=0.2).train()
    x = torch.tensor(_epochs(4, 5, 1, 3000, seed=4), dtype=torch.float32)
    x = x * torch.linspace(0.5, 2.0, 4 * 5).reshape(4, 5, 1, 1)  # make epochs distinguishable
    y = torch.tensor([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 2, 3, 3, 4], [0, 0, 1, 2, -1]])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(5)
    losses = []
    for _ in range(30):
        out = model(x, y, stage="pretrain")
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    print(f"\noverfit: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert all(np.isfinite(losses))
    assert min(losses[-3:]) < 0.5 * losses[0]


def test_forward_under_bf16_autocast():
    """The trainer runs bf16 autocast over fp32 weights: spectrogram and InfoNCE stay float32 inside."""
    model = _small_model().train()
    x = torch.tensor(_epochs(2, 5, 1, 3000, seed=7), dtype=torch.float32)
    y = torch.tensor([[0, 1, 2, 3, 4], [4, 3, 2, 1, -1]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, y, stage="pretrain")
    assert torch.isfinite(out["loss"]) and out["loss_infonce"].dtype == torch.float32
    out["loss"].backward()
    assert model.mask_token.grad is not None and torch.isfinite(model.mask_token.grad).all()
    assert model.predict(x).shape == (2, 5)


# --------------------------------------------------------------------------------------- augmentation


def test_augmentations_are_batched_torch_ops():
    torch.manual_seed(0)
    x = torch.tensor(_epochs(64, 3000, seed=6), dtype=torch.float32) / 25
    g = torch.Generator().manual_seed(0)
    out, choice = augment_raw(x, generator=g, return_choice=True)
    assert out.shape == x.shape and choice.shape == (64,)
    assert set(choice.tolist()) == set(range(len(RAW_AUGMENTATIONS)))
    assert not torch.equal(out, x)
    # Each epoch changed (an identity draw would be a silent no-op augmentation).
    assert ((out - x).abs().amax(dim=1) > 0).all()
    cfg = RawAugmentConfig()
    shifted = time_shift(x[:4], cfg, torch.Generator().manual_seed(1))
    assert torch.allclose(shifted.sort(dim=1).values, x[:4].sort(dim=1).values)  # a permutation (roll)
    masked = zero_mask(x[:4], cfg, torch.Generator().manual_seed(1))
    zeros = (masked == 0).sum(dim=1)
    assert ((zeros >= 1) & (zeros <= 300)).all()
    spec = torch.zeros(2, 29, 129)
    noisy = augment_spectrogram(spec, 1.0, generator=torch.Generator().manual_seed(0))
    assert 0.9 < noisy.std().item() < 1.1


# ------------------------------------------------------------------------------------------- registry


def test_registry_builds_by_name_and_resolves_channels():
    assert "mc2sleepnet" in list_models()
    assert model_config_class("mc2sleepnet") is MC2SleepNetConfig
    model = build_model("MC2SleepNet", MC2SleepNetConfig.small())
    assert isinstance(model, MC2SleepNet) and model.cfg.d_model == 32
    import json

    round_trip = json.loads(json.dumps(MC2SleepNetConfig.small().to_dict()))  # lists and dicts, as from MLflow
    from_dict = build_model("mc2sleepnet", round_trip)
    assert from_dict.cfg == model.cfg
    with pytest.raises(UnknownModelError, match="mc2sleepnet"):
        build_model("no-such-net")
    with pytest.raises(ValueError, match="unknown MC2SleepNetConfig fields"):
        build_model("mc2sleepnet", {"d_modle": 64})
    assert resolve_channels("mc2sleepnet", ["eeg_c3", "eeg_c4", "eog_l"]) == ("eeg_c4",)
    assert resolve_channels("mc2sleepnet", [{"role": "eeg_fpz_cz", "label": "EEG Fpz-Cz"}]) == ("eeg_fpz_cz",)
    with pytest.raises(ValueError, match="eeg_c4"):
        resolve_channels("mc2sleepnet", ["eeg_c3", "eog_l"])
    with pytest.raises(ValueError, match="input_channels"):
        resolve_channels("mc2sleepnet", ["eeg_c4"], MC2SleepNetConfig(input_channels=2))
