"""Every registered model keeps the contract the training loop relies on."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from distsleep.models import build_model, list_models, model_config_class, model_normalization, required_channels

SEED_MODELS = {"mc2sleepnet", "neuronet", "synthsleepnet", "isatsleepnet", "crossfusionsleepnet"}


def test_all_seed_models_are_registered():
    assert SEED_MODELS <= set(list_models())


@pytest.mark.parametrize("name", sorted(SEED_MODELS))
def test_model_contract(name):
    cls = model_config_class(name)
    small = cls.small()
    fields = {f.name for f in dataclasses.fields(cls)}
    assert {"seq_len", "n_classes"} <= fields, name
    # Configs round-trip through JSON (MLflow params, bundles).
    assert cls(**json.loads(json.dumps(small.to_dict()))) == small
    model = build_model(name, dataclasses.replace(small, seq_len=2, n_classes=2))
    # DeepSpeed broadcasts every parameter as bytes at start-up: 0-dim parameters make it fail.
    assert not [n for n, p in model.named_parameters() if p.dim() == 0], name
    assert model_normalization(name) in ("uv", "robust")
    c = len(required_channels(name, small))
    x = torch.randn(2, 2, c, 3000)
    labels = torch.tensor([[0, 1], [1, -1]])
    out = model.train()(x, labels=labels, stage="pretrain")
    # A pre-training forward may expand the batch (MC²SleepNet's cross-masking passes): a multiple of B rows.
    rows = out["logits"].shape[0]
    assert out["logits"].shape[1:] == (2, 2) and rows % 2 == 0 and out["loss"].requires_grad
    assert model.eval()(x, labels=labels, stage="pretrain")["logits"].shape == (2, 2, 2)
    for mode in ("full", "linear"):
        model = build_model(name, dataclasses.replace(small, seq_len=2, n_classes=2))
        model.prepare_finetune(mode)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable, (name, mode)
        out = model.train()(x, labels=labels, stage="finetune")
        out["loss"].backward()
        # Every trainable parameter is reached by the loss: DeepSpeed would otherwise hold dead parameters.
        assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "mask_token" not in n), \
            (name, mode, [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None])
        if mode == "linear":
            assert len(trainable) <= 2, (name, trainable)  # the classifier's weight and bias
