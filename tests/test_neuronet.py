"""NeuroNet and SynthSleepNet: framing, masking, losses, online probe, heads/freezing, load_part, LoRA, registry.

CPU-only and small configs, except the paper-size NeuroNet (built once for its parameter count).
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from distsleep.models import build_model, model_normalization, required_channels, resolve_channels
from distsleep.models.common import count_parameters
from distsleep.models.neuronet import (
    MaskedDecoder,
    NeuroNet,
    NeuroNetConfig,
    frame_starts,
    masked_mse,
    n_masked,
    nt_xent,
    random_keep,
)
from distsleep.models.synthsleepnet import SynthSleepNet, SynthSleepNetConfig, split_modalities

# The pre-training model of NeuroNet-B (encoder, decoder, projector, probe) and the whole module with the
# Mamba head, as documented in distsleep/models/neuronet.py.
NEURONET_B_PRETRAIN_PARAMS = 33.01e6
NEURONET_B_TOTAL_PARAMS = 36.79e6
PUBLISHED_NEURONET_B = 33e6  # DESIGN.md §6


def _x(b: int, l: int, c: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(3000) / 100.0
    base = torch.sin(2 * torch.pi * 2.0 * t) + 0.5 * torch.sin(2 * torch.pi * 11.0 * t)
    return base + torch.randn(b, l, c, 3000, generator=g)


def _labels(b: int, l: int, n: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, n, (b, l), generator=torch.Generator().manual_seed(seed))


def _neuronet(**kw) -> NeuroNet:
    torch.manual_seed(0)
    return NeuroNet(NeuroNetConfig.small(**kw))


def _synth(**kw) -> SynthSleepNet:
    torch.manual_seed(0)
    return SynthSleepNet(SynthSleepNetConfig.small(**kw))


def _trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------------------------------- framing


def test_frame_counts_and_windows():
    assert NeuroNetConfig().n_frames == 73  # 3-s window, 0.375-s step
    assert NeuroNetConfig.synthsleepnet_unimodal().n_frames == 27  # 4-s window, 1-s step
    assert SynthSleepNetConfig().n_tokens == 27
    assert SynthSleepNetConfig.small().unimodal == NeuroNetConfig.synthsleepnet_unimodal_small()
    starts = frame_starts(3000, 300, 37.5)
    assert len(starts) == 73 and starts[-1] + 300 == 3000  # the fractional step reaches the epoch's end
    assert starts[:3] == [0, 38, 75]
    model = _neuronet()
    x = torch.arange(2 * 3000, dtype=torch.float32).reshape(2, 3000)
    frames = model.encoder.frames(x)
    assert frames.shape == (2, model.cfg.n_frames, 300)
    s = frame_starts(3000, 300, model.cfg.frame_step_samples)
    torch.testing.assert_close(frames[1, 3], x[1, s[3]: s[3] + 300])


# ------------------------------------------------------------------------------------------- masking


def test_masked_tokens_are_removed_from_the_encoder():
    assert n_masked(73, 0.8) == 58 and 73 - n_masked(73, 0.8) == 15  # paper size: 15 visible tokens
    assert n_masked(27, 0.4) == 11
    model = _neuronet(mask_ratio=0.5).train()
    seen = []
    model.encoder.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    out = model(_x(2, 3), _labels(2, 3), stage="pretrain")
    t = model.cfg.n_frames
    visible = t - n_masked(t, 0.5)
    # two masked views (CLS + visible only) then the unmasked probe pass (CLS + all)
    assert seen == [1 + visible, 1 + visible, 1 + t]
    assert out["mask_ratio_effective"].item() == pytest.approx(n_masked(t, 0.5) / t)

    synth = _synth().train()
    seen.clear()
    synth.fusion.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        synth(_x(2, 2, 5), _labels(2, 2), stage="pretrain")
    t = synth.cfg.n_tokens
    assert seen == [1 + 5 * (t - n_masked(t, 0.4)), 1 + 5 * t]


def test_no_masking_outside_pretrain_training():
    model = _neuronet().eval()
    x = _x(2, 3)
    a = model(x, _labels(2, 3), stage="pretrain")
    b = model(x, _labels(2, 3), stage="pretrain")
    torch.testing.assert_close(a["logits"], b["logits"])
    assert set(k for k in a if k.startswith("loss")) == {"loss", "loss_probe"}


# ------------------------------------------------------------------------------------------- losses


def test_reconstruction_loss_only_on_masked_positions():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(4, 10, 6, generator=g), torch.randn(4, 10, 6, generator=g)
    ids_keep, mask = random_keep(4, 10, 3, torch.device("cpu"), g)
    assert mask.sum(1).tolist() == [7] * 4 and not mask.gather(1, ids_keep).any()
    base = masked_mse(pred, target, mask)
    visible_changed = target.clone()
    visible_changed[~mask] += 100.0
    assert masked_mse(pred, visible_changed, mask).item() == pytest.approx(base.item())
    masked_changed = target.clone()
    masked_changed[mask] += 1.0
    assert masked_mse(pred, masked_changed, mask).item() > base.item() + 0.5
    expected = ((pred - target) ** 2).mean(-1)[mask].mean()
    assert base.item() == pytest.approx(expected.item())

    # In the model: the loss is the MSE on exactly the positions the encoder did not see, for both views.
    model = _neuronet(mask_ratio=0.6).train()
    feats, calls = [], []
    model.encoder.frame_cnn.register_forward_hook(lambda m, a, out: feats.append(out.detach()))
    model.decoder.register_forward_hook(lambda m, a, out: calls.append((a[1], out.detach())))
    out = model(_x(2, 2), stage="pretrain")
    target = feats[0].reshape(4, model.cfg.n_frames, -1)
    per_view = []
    for ids_keep, pred in calls:
        hidden = torch.ones(4, model.cfg.n_frames, dtype=torch.bool).scatter(1, ids_keep, False)
        per_view.append(((pred - target) ** 2).mean(-1)[hidden].mean())
    assert len(calls) == 2
    assert out["loss_recon"].item() == pytest.approx(((per_view[0] + per_view[1]) / 2).item(), rel=1e-5)


def test_nt_xent_identical_views_beat_shuffled():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(16, 8, generator=g)
    same = nt_xent(z, z + 0.01 * torch.randn(16, 8, generator=g), 0.05)
    shuffled = nt_xent(z, z[torch.randperm(16, generator=g)], 0.05)
    assert same.item() < 0.1 < shuffled.item()
    assert nt_xent(z, z, 1.0).item() < nt_xent(z, z.roll(1, 0), 1.0).item()


def test_decoder_puts_visible_tokens_back_at_their_own_positions():
    torch.manual_seed(0)
    dec = MaskedDecoder(d_in=4, dim=4, heads=1, layers=1, n_tokens=9, out_dim=3)
    with torch.no_grad():
        dec.embed.weight.copy_(torch.eye(4))
        dec.embed.bias.zero_()
    ids_keep, mask = random_keep(3, 9, 4, torch.device("cpu"), torch.Generator().manual_seed(3))
    visible = torch.arange(3 * 4 * 4, dtype=torch.float32).reshape(3, 4, 4) + 1.0
    full = dec.assemble(visible, ids_keep)
    assert full.shape == (3, 9, 4)
    for i in range(3):
        for j, pos in enumerate(ids_keep[i].tolist()):
            torch.testing.assert_close(full[i, pos], visible[i, j])
        torch.testing.assert_close(full[i][mask[i]], dec.mask_token[0].expand(int(mask[i].sum()), -1))
    assert dec(visible, ids_keep).shape == (3, 9, 3)


def test_synthsleepnet_decoders_get_exactly_their_modality_tokens():
    """Guard against the public slicing bug: with an identity fusion Transformer, modality m's decoder must
    receive embed_m(u_m) + modality_m + pos at exactly m's visible positions."""
    model = _synth().train()
    model.fusion.blocks = torch.nn.ModuleList()
    model.fusion.norm = torch.nn.Identity()
    captured = {}
    for role, dec in model.decoders.items():
        dec.register_forward_pre_hook(lambda m, args, role=role: captured.__setitem__(role, args))
    x = _x(2, 2, 5, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model(x, _labels(2, 2), stage="pretrain")
    with torch.no_grad():
        tokens = [t[:, 1:] for t in model.unimodal_tokens(x.reshape(4, 5, 3000))]
        for m, role in enumerate(model.cfg.modalities):
            visible, ids = captured[role]
            e = model.fusion.embed[role](tokens[m]) + model.fusion.modality_embed[m] + model.fusion.pos_embed
            expected = torch.gather(e, 1, ids.unsqueeze(-1).expand(-1, -1, e.shape[-1]))
            torch.testing.assert_close(visible, expected)
    with pytest.raises(ValueError):
        split_modalities(torch.zeros(1, 10, 2), [3, 3, 3, 3])


# ------------------------------------------------------------------------------------------- online probe


def test_probe_sends_no_gradient_into_the_encoders():
    model = _neuronet().train()
    out = model(_x(2, 3), _labels(2, 3), stage="pretrain")
    out["loss_probe"].backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.probe.weight.grad is not None and model.probe.weight.grad.abs().sum() > 0

    synth = _synth().train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = synth(_x(2, 2, 5), _labels(2, 2), stage="pretrain")
    out["loss_probe"].backward()
    assert all(p.grad is None for p in synth.fusion.parameters())
    assert synth.probe.weight.grad.abs().sum() > 0
    assert "logits" in out and out["logits"].shape == (2, 2, 5)


# ------------------------------------------------------------------------------------------- training


def _ssl_losses(model, x, y, steps=30, lr=2e-3):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    history = []
    torch.manual_seed(5)
    for _ in range(steps):
        out = model(x, y, stage="pretrain")
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        history.append((out["loss_recon"] + out["loss_contrastive"]).item())
    return history


def test_neuronet_pretraining_loss_falls():
    model = _neuronet().train()
    h = _ssl_losses(model, _x(4, 4, seed=6), _labels(4, 4))
    first, last = sum(h[:5]) / 5, sum(h[-5:]) / 5
    assert last < 0.8 * first, h


def test_synthsleepnet_pretraining_loss_falls():
    model = _synth().train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = _ssl_losses(model, _x(4, 2, 5, seed=7), _labels(4, 2))
    first, last = sum(h[:5]) / 5, sum(h[-5:]) / 5
    assert last < 0.8 * first, h


# ------------------------------------------------------------------------------------------- heads


def test_neuronet_prepare_finetune_freezes_exactly_and_head_mode_round_trips():
    model = _neuronet()
    assert model.active_head == "probe"
    with pytest.raises(RuntimeError, match="prepare_finetune"):
        model(_x(1, 2), stage="finetune")
    assert {n.split(".")[0] for n in _trainable(model)} == {"encoder", "decoder", "projector", "probe"}

    model.prepare_finetune("linear")
    assert _trainable(model) == {"linear_head.weight", "linear_head.bias"}
    model.train()
    assert not model.encoder.training and not model.context.training and model.linear_head.training
    out = model(_x(2, 3), _labels(2, 3), stage="finetune")
    out["loss"].backward()
    assert all(p.grad is None for p in model.encoder.parameters())

    model.prepare_finetune("full")
    assert {n.split(".")[0] for n in _trainable(model)} == {"encoder", "context", "head"}
    assert {n for n, _ in model.encoder.named_parameters()} <= {n[len("encoder."):] for n in _trainable(model)}
    model.train()
    assert model.encoder.training and model.head_dropout.training and not model.decoder.training
    frozen = NeuroNet(NeuroNetConfig.small(finetune_encoder=False))
    frozen.prepare_finetune("full")
    assert {n.split(".")[0] for n in _trainable(frozen)} == {"context", "head"}

    for mode in ("linear", "full"):
        model.prepare_finetune(mode)
        model.eval()
        x = _x(2, 3, seed=8)
        expected = model(x, stage="eval")["logits"]
        state = model.state_dict()
        assert "head_mode" in state
        fresh = NeuroNet(model.cfg)
        fresh.load_state_dict(state)
        fresh.eval()
        assert fresh.active_head == mode
        torch.testing.assert_close(fresh(x, stage="eval")["logits"], expected)
    with pytest.raises(ValueError):
        model.prepare_finetune("partial")


def test_synthsleepnet_prepare_finetune_and_lora():
    model = _synth()
    assert all(not p.requires_grad for p in model.unimodal.parameters())  # frozen during fusion pre-training
    model.prepare_finetune("linear")
    assert _trainable(model) == {"linear_head.weight", "linear_head.bias"}

    model.prepare_finetune("full")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]  # what a DeepSpeed optimizer sees
    unimodal = [n for n in trainable if n.startswith("unimodal.")]
    assert unimodal and all(".lora_A." in n or ".lora_B." in n for n in unimodal)
    assert {n for n, _ in model.unimodal.named_parameters() if "lora_" in n} == {n[len("unimodal."):] for n in unimodal}
    assert {n.split(".")[0] for n in trainable} == {"unimodal", "fusion", "context", "head"}
    assert {n for n, _ in model.fusion.named_parameters()} <= {n[len("fusion."):] for n in trainable}
    base = model.unimodal["eeg_c4"].blocks[0].attn.qkv.base_layer.weight
    assert not base.requires_grad
    model.train()
    enc = model.unimodal["eeg_c4"]
    assert not enc.training and enc.blocks[0].attn.qkv.lora_dropout.training
    assert model.fusion.training and model.head_dropout.training and not model.decoders.training

    x, y = _x(2, 2, 5, seed=9), _labels(2, 2)
    out = model(x, y, stage="finetune")
    out["loss"].backward()
    assert enc.blocks[0].attn.qkv.lora_B["default"].weight.grad.abs().sum() > 0
    assert base.grad is None

    model.eval()
    before = model(x, stage="eval")["logits"]
    with torch.no_grad():
        for name, p in model.unimodal.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    after = model(x, stage="eval")["logits"]
    assert not torch.allclose(before, after)

    fresh = SynthSleepNet(model.cfg)
    fresh.load_state_dict(model.state_dict())  # LoRA keys exist in every stage: strict load works
    fresh.eval()
    assert fresh.active_head == "full"
    torch.testing.assert_close(fresh(x, stage="eval")["logits"], after)


def test_synthsleepnet_load_part():
    model = _synth()
    assert model.missing_parts == list(model.cfg.modalities)
    torch.manual_seed(11)
    donor = NeuroNet(model.cfg.unimodal)
    state = donor.state_dict()
    model.load_part("eog_l", state)
    enc = model.unimodal["eog_l"]
    torch.testing.assert_close(enc.blocks[0].attn.qkv.base_layer.weight, donor.encoder.blocks[0].attn.qkv.weight)
    torch.testing.assert_close(enc.frame_cnn.stem[1].running_var, donor.encoder.frame_cnn.stem[1].running_var)
    assert "eog_l" not in model.missing_parts
    model.load_part("emg", {f"module.{k}": v for k, v in state.items()})  # DDP/DeepSpeed prefix tolerated
    assert model.parts_loaded.sum().item() == 2
    reloaded = SynthSleepNet(model.cfg)
    reloaded.load_state_dict(model.state_dict())
    assert reloaded.missing_parts == model.missing_parts

    other = NeuroNet(NeuroNetConfig.synthsleepnet_unimodal(small=True, d_model=48))
    with pytest.raises(ValueError, match="'ecg'.*shape mismatch"):
        model.load_part("ecg", other.state_dict())
    wrong_frames = NeuroNet(NeuroNetConfig.small())  # 3-s frames: 10 positions instead of 7
    with pytest.raises(ValueError, match="'ecg'"):
        model.load_part("ecg", wrong_frames.state_dict())
    with pytest.raises(ValueError, match="'ecg'.*no 'encoder"):
        model.load_part("ecg", {"foo": torch.zeros(1)})
    with pytest.raises(KeyError, match="airflow"):
        model.load_part("airflow", state)


# ------------------------------------------------------------------------------------------- configs, registry


def test_configs_round_trip_through_json():
    for cfg in (NeuroNetConfig(), NeuroNetConfig.small(mask_ratio=0.3), NeuroNetConfig.synthsleepnet_unimodal()):
        back = NeuroNetConfig(**json.loads(json.dumps(cfg.to_dict())))
        assert back == cfg
    for cfg in (SynthSleepNetConfig(), SynthSleepNetConfig.small(modalities=("eeg_c4", "eog_l"))):
        back = SynthSleepNetConfig(**json.loads(json.dumps(cfg.to_dict())))
        assert back == cfg and isinstance(back.unimodal, NeuroNetConfig)
    with pytest.raises(ValueError):
        NeuroNetConfig(mask_ratio=1.0)
    with pytest.raises(ValueError):
        SynthSleepNetConfig(modalities=("eeg_c4", "eeg_c4"))


def test_registry_slots_and_normalization():
    assert model_normalization("neuronet") == model_normalization("synthsleepnet") == "robust"
    assert required_channels("neuronet") == (("eeg_c4", "eeg_fpz_cz"),)
    eog = NeuroNetConfig.small(channel_roles=("eog_l",))
    assert required_channels("neuronet", eog) == (("eog_l",),)
    assert resolve_channels("neuronet", ["eeg_c3", "eog_l"], eog) == ("eog_l",)
    assert resolve_channels("neuronet", ["eeg_fpz_cz", "eog"]) == ("eeg_fpz_cz",)
    assert required_channels("synthsleepnet") == (("eeg_c4",), ("eeg_c3",), ("eog_l",), ("emg",), ("ecg",))
    two = SynthSleepNetConfig.small(modalities=("eeg_fpz_cz", "eog"))
    assert resolve_channels("synthsleepnet", ["eog", "emg", "eeg_fpz_cz"], two) == ("eeg_fpz_cz", "eog")
    with pytest.raises(ValueError, match="ecg"):
        resolve_channels("synthsleepnet", ["eeg_c4", "eeg_c3", "eog_l", "emg"], SynthSleepNetConfig.small())
    model = build_model("synthsleepnet", two.to_dict())
    out = model(_x(1, 2, 2), stage="eval")
    assert out["logits"].shape == (1, 2, 5)
    with pytest.raises(ValueError):
        model(_x(1, 2, 3), stage="eval")
    assert isinstance(build_model("neuronet", NeuroNetConfig.small(n_classes=2)), NeuroNet)


def test_paper_size_parameter_counts():
    torch.manual_seed(0)
    model = NeuroNet(NeuroNetConfig())
    count = count_parameters(model)
    print("\nNeuroNet-B (paper size)\n" + str(count))
    pretrain = sum(count.by_module[k] for k in ("encoder", "decoder", "projector", "probe"))
    print(f"pre-training model {pretrain / 1e6:.2f} M vs published ~{PUBLISHED_NEURONET_B / 1e6:.0f} M")
    assert pretrain == pytest.approx(NEURONET_B_PRETRAIN_PARAMS, rel=0.005)
    assert pretrain == pytest.approx(PUBLISHED_NEURONET_B, rel=0.05)
    assert count.total == pytest.approx(NEURONET_B_TOTAL_PARAMS, rel=0.005)
    print("NeuroNet small:", count_parameters(_neuronet()).total, "SynthSleepNet small:", count_parameters(_synth()).total)
