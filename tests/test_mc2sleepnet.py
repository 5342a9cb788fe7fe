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
from distsleep.models.common import count_parameters, masked_cross_entropy
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

EXPECTED_MASKED_OF_21 = {0.0: 0, 0.15: 3, 0.25: 5, 0.5: 11, 0.75: 16, 0.85: 18}


@pytest.mark.parametrize("ratio", sorted(EXPECTED_MASKED_OF_21))
def test_masking_counts_token_and_untouched(ratio):
    model = _small_model()
    b, l, d = 16, 21, model.cfg.d_model
    assert n_masked(l, ratio) == EXPECTED_MASKED_OF_21[ratio]
    o_sg, o_sp = torch.randn(b, l, d), torch.randn(b, l, d)
    g = torch.Generator().manual_seed(1)
    sg, sp, m_sg, m_sp = model.mask_sequences(o_sg, o_sp, ratio, generator=g)
    k = EXPECTED_MASKED_OF_21[ratio]
    for out, mask, orig in ((sg, m_sg, o_sg), (sp, m_sp, o_sp)):
        assert mask.shape == (b, l)
        assert (mask.sum(dim=1) == k).all()
        token = model.mask_token.detach()
        assert torch.equal(out[mask], token.expand(int(mask.sum()), d))
        assert torch.equal(out[~mask], orig[~mask])
    if 0 < k < l:
        # Independent positions per modality and per sequence.
        assert not torch.equal(m_sg, m_sp)
        assert len({tuple(row.tolist()) for row in m_sg}) > 1
        # One shared parameter: both modalities receive gradient into the same token.
        (sg.sum() + 2 * sp.sum()).backward()
        assert torch.allclose(model.mask_token.grad, torch.full((d,), float(m_sg.sum() + 2 * m_sp.sum())))


def test_masking_only_in_pretrain_training():
    model = _small_model(seq_len=7, mask_ratio=0.5)
    x = torch.tensor(_epochs(2, 7, 1, 3000), dtype=torch.float32)
    captured = {}
    model.sg_layers[0].register_forward_pre_hook(lambda mod, args: captured.update(sg=args[0].detach()))
    model.train()
    out = model(x, stage="pretrain")
    k = n_masked(7, 0.5)
    assert k == 4
    assert (out["mask_sg"].sum(1) == k).all() and (out["mask_sp"].sum(1) == k).all()
    assert out["mask_ratio_effective"].item() == pytest.approx(k / 7)
    # The sequence stack sees the mask token (plus the positional encoding) at the masked positions.
    from distsleep.models.common import sinusoidal_positional_encoding

    pe = sinusoidal_positional_encoding(7, model.cfg.d_model)
    expected = (model.mask_token.detach() + pe).expand(2, -1, -1)
    mask = out["mask_sg"]
    assert torch.allclose(captured["sg"][mask], expected[mask], atol=1e-6)
    for stage in ("finetune", "eval"):
        out = model(x, stage=stage)
        assert not out["mask_sg"].any() and not out["mask_sp"].any()
        assert out["mask_ratio_effective"].item() == 0.0
    model.eval()
    assert not model(x, stage="pretrain")["mask_sg"].any()
    model.train()
    no_mask = _small_model(seq_len=7, mask_ratio=0.0).train()
    assert not no_mask(x, stage="pretrain")["mask_sp"].any()


# --------------------------------------------------------------------------------------------- losses


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


def test_loss_ignores_unscored_epochs():
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

    model = _small_model().eval()
    x = torch.tensor(_epochs(2, 5, 1, 3000), dtype=torch.float32)
    y = torch.tensor([[0, -1, 2, 3, -1], [4, 4, -1, 1, 0]])
    out = model(x, y, stage="eval")
    assert out["logits"].shape == (2, 5, 5)
    scored = y >= 0
    expected = sum(
        torch.nn.functional.cross_entropy(out[key][scored], y[scored]) for key in ("logits", "logits_sg", "logits_sp")
    )
    assert torch.allclose(out["loss"], expected, atol=1e-5)  # eval/finetune weights are 1/1/1
    out_pt = model(x, y, stage="pretrain")
    w = model.cfg.loss_weights_pretrain
    expected_pt = w[0] * out_pt["loss_concat"] + w[1] * out_pt["loss_sg"] + w[2] * out_pt["loss_sp"]
    assert torch.allclose(out_pt["loss_seq"], expected_pt)
    assert torch.allclose(out_pt["loss"], out_pt["loss_seq"] + out_pt["loss_infonce"])


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
