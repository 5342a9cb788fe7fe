"""`distsleep export`: a trained model as a checked TorchScript file (`distsleep.export`)."""

from __future__ import annotations

import argparse

from distsleep.export import METADATA, TOLERANCE, ExportConfig, export_torchscript
from distsleep.shards.loader import SPLITS

DESCRIPTION = ("Write a trained model as a TorchScript file mapping windows (batch, seq_len, channels, samples) to stage "
               "probabilities, with its preprocessing, channel roles and provenance inside (" + METADATA + "). The file "
               "is traced on a real batch from --shards and written only when its outputs equal the PyTorch model's "
               f"(within {TOLERANCE:g}). ONNX is not offered (onnx/onnxruntime are not part of the pinned environment). "
               "Exit status: 0 written, 2 the model or the shards cannot be used, or the outputs differ.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="SOURCE",
                   help="model bundle: models:/NAME/VERSION or models:/NAME@ALIAS, an MLflow run id, runs:/<run_id>, a "
                        "model.pt file or a folder holding one")
    p.add_argument("--shards", required=True, metavar="MANIFEST",
                   help="manifest.json whose first record of --split gives the batch the export is checked on")
    p.add_argument("--split", default="test", choices=SPLITS, help="(default %(default)s)")
    p.add_argument("--out", required=True, metavar="FILE", help="the TorchScript file to write, e.g. stager.torchscript.pt")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db)")


def run(args: argparse.Namespace) -> int:
    path = export_torchscript(ExportConfig(model=args.model, shards=args.shards, out=args.out, split=args.split,
                                           tracking_uri=args.tracking_uri))
    print(f"wrote {path.resolve()}: TorchScript, outputs checked equal to the PyTorch model's on a real batch; "
          f"load with torch.jit.load (metadata in the extra file {METADATA})")
    return 0
