"""`nanotrain recipes`: list the named recipes with their size and causality at a scale."""

from __future__ import annotations

import argparse
from typing import Any

EPILOG = """examples:
  nanotrain recipes                 # the full-scale models (the original shapes)
  nanotrain recipes --scale tiny    # what `nanotrain run` trains on a CPU
  nanotrain recipes --json          # machine-readable
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "recipes", help="list the named recipes (architecture, parameter counts, causal or not)",
        description="List every named recipe with its parameter counts at a scale. Counts come from building "
                    "the model on PyTorch's meta device, so no memory is allocated.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=["full", "small", "tiny"], default="full",
                   help="model size to count (default: full, the original runs' shape)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=handle)


def recipe_rows(scale: str) -> list[dict[str, Any]]:
    """One dict per recipe: name, description, scale, params {total, excl_tables, engram_tables}, causal."""
    import torch

    from nanotrain.model.gpt import GPT
    from nanotrain.recipes import RECIPES

    rows = []
    for recipe in RECIPES.values():
        model_cfg, _ = recipe.build(scale)
        with torch.device("meta"):
            model = GPT(model_cfg)
        rows.append({"name": recipe.name, "description": recipe.description, "scale": scale,
                     "params": model.param_counts(), "causal": model.is_causal,
                     "resume_from": recipe.resume_from})
    return rows


def handle(args: argparse.Namespace) -> int:
    from nanotrain.config import dumps

    rows = recipe_rows(args.scale)
    if args.json:
        print(dumps(rows))
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'recipe':<{width}}  scale  {'total':>8}  {'no-tables':>9}  {'tables':>7}  causal  description")
    for r in rows:
        p = r["params"]
        print(f"{r['name']:<{width}}  {r['scale']:<5}  {p['total'] / 1e6:7.2f}M  {p['excl_tables'] / 1e6:8.2f}M  "
              f"{p['engram_tables'] / 1e6:6.2f}M  {'yes' if r['causal'] else 'NO':<6}  {r['description']}")
    return 0
