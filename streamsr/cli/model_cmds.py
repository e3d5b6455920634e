"""`streamsr info` and `streamsr import-mprnet`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from streamsr.cli import common_options, main
from streamsr.errors import OutputError
from streamsr.models.configs import CONFIGS


@main.command()
@click.argument("file", required=False, metavar="[FILE]")
@click.option("--model", "model_name", default="lite", show_default=True,
              help="paper, lite, tiny, or a weights file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@common_options(progress=False)
def info(file: str | None, model_name: str, as_json: bool) -> None:
    """Print a model's config, parameter count and MACs per input pixel.

    FILE: a weights file (as --model), or a model written by `streamsr export` (.onnx, .xml),
    whose metadata is shown.
    """
    if file is not None:
        from streamsr.inference.export import is_export_file

        if is_export_file(file):
            _export_info(file, as_json)
            return
        model_name = file
    # known figures or a meta-device count: no model is built and no weights are loaded
    from streamsr.models.info import config_info  # torch: imported when a command runs
    from streamsr.models.weights import BUNDLED, model_config, read_metadata, weights_problem

    config = model_config(model_name)
    path = BUNDLED.get(model_name) if model_name in CONFIGS else Path(model_name)
    data = config_info(config)
    data["weights"] = problem = None
    if path is not None and path.exists():
        problem = weights_problem(path)  # what `upscale --model` would refuse, said up front
        data["weights"] = {"path": str(path),
                           **{k: v for k, v in read_metadata(path).items() if k != "config"}}
        data["weights_problem"] = problem
    if as_json:
        click.echo(json.dumps(data, indent=None, sort_keys=True))
        return
    click.echo(f"model        {data['name']}  (x{data['scale']} joint deblur + super-resolution)")
    click.echo(f"parameters   {data['parameters']:,}  (MPRNet trunk {data['trunk_parameters']:,}, "
               f"head {data['head_parameters']:,})")
    click.echo(f"compute      {data['macs_per_input_pixel']:,} MACs per input pixel "
               f"({data['gmacs_per_320x180_frame']} GMACs for a 320x180 frame)")
    t = data["config"]["trunk"]
    click.echo(f"trunk        n_feat {t['n_feat']}, unet +{t['scale_unetfeats']}, orsnet "
               f"+{t['scale_orsnetfeats']}, {t['num_cab']} CABs per ORB, reduction {t['reduction']}")
    click.echo(f"head         {data['config']['sr_feat']} features, {data['config']['sr_blocks']} "
               f"residual blocks")
    weights = data["weights"]
    click.echo(f"weights      {weights['path'] if weights else 'none (untrained config)'}")
    if problem:
        click.echo(f"             not usable for upscale: {problem}")


def _export_info(path: str, as_json: bool) -> None:
    """`streamsr info OUT` for an exported file: its streamsr metadata, read back."""
    from streamsr.inference.export import read_export

    meta = read_export(path)
    config = json.loads(meta.get("config", "{}"))
    if as_json:
        click.echo(json.dumps({"path": path, **meta, "config": config}, sort_keys=True))
        return
    click.echo(f"exported     {path}  ({meta.get('container')}, {meta.get('precision')}, "
               f"streamsr {meta.get('streamsr_version')})")
    click.echo(f"model        {config.get('name', '?')}  (x{meta.get('scale')})")
    click.echo(f"weights      sha256 {meta.get('weights_sha256')}")
    click.echo(f"input        {meta.get('input')}")
    click.echo(f"output       {meta.get('output')}")
    click.echo(f"exporter     {meta.get('exporter')}, graph version {meta.get('graph_version')}")
    click.echo(f"config       {json.dumps(config, sort_keys=True)}")


@main.command("import-mprnet")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--seed", default=0, show_default=True, help="Seed for the new head's initialisation.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@common_options(progress=False)
def import_mprnet_cmd(checkpoint: str, out: str, seed: int, overwrite: bool) -> None:
    """Convert an official MPRNet deblurring checkpoint into a joint-model weights file.

    The trunk comes from CHECKPOINT (loaded with weights_only=True); the SR head is freshly
    initialised. Fine-tune it with `streamsr train --init OUT`.
    """
    if Path(out).exists() and not overwrite:
        raise OutputError(f"{out} exists; pass --overwrite to replace it")
    from streamsr.models.weights import import_mprnet

    model = import_mprnet(checkpoint, out, seed=seed)
    n = sum(1 for _ in model.trunk.state_dict())
    click.echo(f"wrote {out}: MPRNet trunk ({n} tensors) from {checkpoint}, new SR head (seed {seed})")
