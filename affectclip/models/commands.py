"""`affectclip convert`: any loadable foreign checkpoint -> one of our .safetensors checkpoints.

OpenAI/open_clip CLIP files, EmotionCLIP's `latest.pt` and EmoCLIP's DDP state dicts are pickles or TorchScript
archives; converted once, the model travels as safetensors with its config in the metadata, and the foreign file
never has to be opened again.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="write a foreign checkpoint (OpenAI, open_clip, EmotionCLIP, EmoCLIP) as an affectclip .safetensors",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("input", help="the checkpoint to convert (.pt/.pth/.bin/.safetensors)")
    p.add_argument("output", help="the .safetensors file to write (written atomically)")
    p.add_argument("overrides", nargs="*",
                   help="config values no weight records, section.key=value, e.g. text_cfg.heads=8 quick_gelu=true")
    p.set_defaults(func=_convert)


def _parse_overrides(items: list[str]) -> dict:
    """section.key=value pairs -> a nested dict for create_model's overrides; values read as YAML scalars."""
    import yaml

    from affectclip.core.errors import UserError

    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise UserError(f"override '{item}' is not section.key=value (e.g. text_cfg.heads=8)")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise UserError(f"override '{item}': the value is not a plain YAML scalar ({exc.problem})") from exc
        if isinstance(value, (dict, list)):
            raise UserError(f"override '{item}': give one scalar per key")
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override '{item}' conflicts with another override of '{part}'")
        node[leaf] = value
    return out


def _convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from affectclip.core.errors import UserError
    from affectclip.models.checkpoint import save_checkpoint
    from affectclip.models.factory import create_model

    src, out = Path(args.input), Path(args.output)
    if out.suffix != ".safetensors":
        raise UserError(f"output {out}: checkpoints are written as .safetensors")
    if not src.is_file():
        raise UserError(f"input {src}: no such file")
    if out.exists() and out.resolve() == src.resolve():
        raise UserError(f"output {out} is the input; write the conversion to a new file")
    model = create_model(src, **_parse_overrides(args.overrides))
    save_checkpoint(model, out, extra_metadata={"converted_from": src.name})
    print(f"wrote {out} ({model.config.get('source_layout', 'affectclip')} layout, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)")
    return 0
