"""Write a trained checkpoint as one self-contained model file, such as the embedded demo model.

The file is what :func:`a2net.checkpoint.save_model_file` writes (the weights, their SHA-256 and
the checkpoint's state in the safetensors metadata), with two more entries in the state:

* ``inference``: the options :func:`a2net.inference.inference_defaults` reads, so that
  ``a2net.align``, ``a2net eval`` and ``a2net demo`` use them unless told otherwise (measure them
  first: ``python experiments/real_photos.py CHECKPOINT``);
* ``history``: one line on how the model was trained, which ``a2net demo`` prints.

A shipped file must not carry a path of the machine it was trained on: a stored training option
that holds an absolute path (``init_from``, ``output_dir``, ``data``, ...) is refused unless
``--set`` replaces it. Usage, from the checkout::

    python experiments/ship_model.py runs/finetune/last a2net/assets/demo_affine.safetensors \\
        --iterations 2 --symmetric --history "..." \\
        --set init_from="the previous embedded model" --set output_dir="runs/finetune"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from a2net import checkpoint as ckpt  # noqa: E402
from a2net.inference import inference_defaults  # noqa: E402

# the entries save_model_file writes itself
RESERVED = ("format", "step", "config", "backbone", "torch_version")


def _absolute_paths(value, where: str):
    """``(where, value)`` of every string in ``value`` that is an absolute path."""
    if isinstance(value, str):
        if value.startswith(("/", "~")) or (len(value) > 2 and value[1] == ":" and value[2] in "\\/"):
            yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _absolute_paths(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _absolute_paths(item, f"{where}[{i}]")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint folder or .safetensors model file")
    parser.add_argument("out", help="the model file to write (.safetensors)")
    parser.add_argument("--iterations", type=int, required=True, help="composed passes of the affine model")
    parser.add_argument("--symmetric", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--refine", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--history", default=None, help="one line: how the model was trained")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="replace a stored training option (VALUE as JSON, else as a string); repeatable",
    )
    args = parser.parse_args(argv)

    model = ckpt.load_model(args.checkpoint)
    state = dict(model.checkpoint_state)
    extra = {k: v for k, v in state.items() if k not in RESERVED}
    options = dict(extra.get("options") or {})
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep or key not in options:
            parser.error(f"--set: expected OPTION=VALUE with a stored option {sorted(options)}, got {item!r}")
        try:
            options[key] = json.loads(text)
        except json.JSONDecodeError:
            options[key] = text
    if options:
        extra["options"] = options
    found = list(_absolute_paths(extra, "state"))
    if found:
        parser.error(
            "the state holds machine paths, replace them with --set: " + ", ".join(f"{w}={v!r}" for w, v in found)
        )
    extra["inference"] = inference_defaults(model, args.iterations, args.symmetric, args.refine)
    if args.history:
        extra["history"] = args.history
    out = ckpt.save_model_file(args.out, model, step=state["step"], extra=extra)
    shipped = ckpt.load_model(out)  # reads back: SHA-256, shapes, finite weights
    assert shipped.checkpoint_state["inference"] == extra["inference"]
    print(f"wrote {out}: step {state['step']}, inference {extra['inference']}, {out.stat().st_size / 2**20:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
