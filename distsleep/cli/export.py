"""`distsleep export`: a trained model as a checked TorchScript or ONNX file (`distsleep.export`)."""

from __future__ import annotations

import argparse

from distsleep.errors import InputError
from distsleep.export import FORMATS, METADATA, TOLERANCE, ExportConfig, export_model
from distsleep.shards.loader import SPLITS

DESCRIPTION = ("Write a trained model as a TorchScript or ONNX file mapping windows (batch, seq_len, channels, "
               "samples) to stage probabilities, with its preprocessing, channel roles and provenance inside ("
               + METADATA + "). The file is exported on a real batch from --shards and written only when, run by its "
               "own runtime (TorchScript, ONNX Runtime), its outputs equal the PyTorch model's (within "
               f"{TOLERANCE:g}) on that batch, on half of it and on one window. "
               "Exit status: 0 written, 2 the model or the shards cannot be used, or the outputs differ.")

LOADING = {"torchscript": f"load with torch.jit.load (metadata in the extra file {METADATA})",
           "onnx": f"run with onnxruntime.InferenceSession (input 'windows', output 'probabilities'; metadata in the "
                   f"model's metadata property {METADATA})"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="SOURCE",
                   help="model bundle: models:/NAME/VERSION or models:/NAME@ALIAS, an MLflow run id, runs:/<run_id>, a "
                        "model.pt file or a folder holding one")
    p.add_argument("--shards", required=True, metavar="MANIFEST",
                   help="manifest.json whose first record of --split gives the batch the export is checked on")
    p.add_argument("--split", default="test", choices=SPLITS, help="(default %(default)s)")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="the file to write, e.g. stager.torchscript.pt or stager.onnx")
    p.add_argument("--format", choices=FORMATS,
                   help="default: onnx when --out ends in .onnx, else torchscript")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db)")


def file_format(out: str, chosen: str | None) -> str:
    """The format of --out: --format if given (an .onnx name with another format is refused: the file would lie
    about what it holds), else from the name."""
    named_onnx = out.lower().endswith(".onnx")
    if chosen is None:
        return "onnx" if named_onnx else "torchscript"
    if named_onnx and chosen != "onnx":
        raise InputError(out, f"an .onnx file name for a {chosen} export; name it otherwise or use --format onnx")
    return chosen


def run(args: argparse.Namespace) -> int:
    fmt = file_format(args.out, args.format)
    path = export_model(ExportConfig(model=args.model, shards=args.shards, out=args.out, split=args.split,
                                     tracking_uri=args.tracking_uri, format=fmt))
    print(f"wrote {path.resolve()}: {'ONNX' if fmt == 'onnx' else 'TorchScript'}, outputs checked equal to the "
          f"PyTorch model's on a real batch; {LOADING[fmt]}")
    return 0
