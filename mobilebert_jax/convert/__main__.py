"""python -m mobilebert_jax.convert {from-hf,to-hf} --input DIR --output DIR [--architecture NAME]

from-hf: an HF MobileBERT directory -> this project's params directory.
to-hf:   a params directory -> an HF directory that transformers loads.
"""

from __future__ import annotations

import sys

from mobilebert_jax import cli
from mobilebert_jax.convert.hf import ARCHITECTURES, from_hf, to_hf
from mobilebert_jax.convert.native import load_params, save_params


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m mobilebert_jax.convert", description=__doc__)
    parser.add_argument("direction", choices=("from-hf", "to-hf"))
    parser.add_argument("--input", required=True, help="directory to read")
    parser.add_argument("--output", required=True, help="directory to write")
    parser.add_argument("--architecture", choices=sorted(ARCHITECTURES), default=None,
                        help="model class; inferred from config.json or the tensors when omitted")
    args = parser.parse_args(argv)
    if args.direction == "from-hf":
        config, params = from_hf(args.input, args.architecture)
        save_params(args.output, config, params, args.architecture)
    else:
        config, params = load_params(args.input)
        to_hf(config, params, args.output, args.architecture)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_argparse(main))
