"""python -m mobilebert_jax.convert {from-hf,from-run,from-tf,to-hf} --input SOURCE --output DIR [--architecture NAME]
                                  [--config bert_config.json] [--overwrite]

from-hf:  an HF MobileBERT directory or hub id (google/mobilebert-uncased) -> this project's params directory.
from-run: a trainer workdir (its latest finished checkpoint) or one checkpoint step directory -> a params directory.
from-tf:  a TensorFlow MobileBERT checkpoint, google-research's TF1 or Model Garden's TF2 (its prefix or its
          directory), with --config bert_config.json -> a params directory with TF1's semantics (needs TensorFlow).
to-hf:    any model (params directory, trainer workdir, checkpoint step, HF directory) -> an HF directory that
          transformers loads, with the model's tokenizer files (`transformers.pipeline("fill-mask", model=DIR)`).

The tokenizer recorded with the input travels to the output. --output must be a new or empty directory, or one
this command wrote before (--overwrite writes over other files); a training workdir is always refused.
"""

from __future__ import annotations

import sys

from mobilebert_jax import cli, model_source, output_paths
from mobilebert_jax.errors import ConfigError
from mobilebert_jax.convert.hf import ARCHITECTURES, to_hf
from mobilebert_jax.convert import tf_checkpoint
from mobilebert_jax.convert.native import save_params
from mobilebert_jax.data import tokenizer_record

# direction -> the source kinds it takes (None: any).
_KINDS = {"from-hf": ("hf_dir",), "from-run": ("checkpoint",), "from-tf": (), "to-hf": None}


def convert(direction: str, input_spec: str, output: str, architecture: str | None = None,
            config: str | None = None, overwrite: bool = False) -> str:
    output_paths.check_directory(output, "--output", f"convert {direction}", overwrite)  # before anything is read
    if (direction == "from-tf") != (config is not None):
        raise ConfigError("--config (the checkpoint's bert_config.json) goes with from-tf, and only with it")
    if direction == "from-tf":
        if architecture is not None:
            raise ConfigError("from-tf takes no --architecture: the checkpoint's heads decide it")
        model_config, arch, params, report = tf_checkpoint.from_tf(input_spec, config)
        output_paths.mark_directory(output, f"convert {direction}")
        save_params(output, model_config, params, arch)
        return f"wrote {output}: {report} (no tokenizer recorded: the vocab.txt released beside it is not read)"
    source = model_source.open_source(input_spec, "--input")
    kinds = _KINDS[direction]
    if kinds is not None and source.kind not in kinds:
        raise ConfigError(f"--input={input_spec!r} is a {source.kind.replace('_', ' ')}; {direction} takes "
                          f"{' or '.join(k.replace('_', ' ') for k in kinds)} (to-hf takes any model)")
    params = model_source.read(source)
    output_paths.mark_directory(output, f"convert {direction}")
    if direction == "to-hf":
        to_hf(source.config, params, output, architecture)
        files = tokenizer_record.write_hf_files(source.tokenizer, source.tokenizer_dir, output,
                                                source.config.max_position_embeddings)
        return f"wrote {output}" + (f" (tokenizer: {', '.join(files)})" if files else " (no tokenizer recorded)")
    save_params(output, source.config, params, architecture)
    tokenizer_record.copy(source.tokenizer, source.tokenizer_dir, output)
    return f"wrote {output}" + ("" if source.tokenizer else " (the input records no tokenizer)")


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m mobilebert_jax.convert", description=__doc__)
    parser.add_argument("direction", choices=tuple(_KINDS))
    parser.add_argument("--input", required=True, help="the model to read (a directory, or an HF hub id)")
    parser.add_argument("--output", required=True, help="directory to write")
    parser.add_argument("--architecture", choices=sorted(ARCHITECTURES), default=None,
                        help="model class; inferred from config.json or the tensors when omitted")
    parser.add_argument("--config", default=None,
                        help="from-tf only: the bert_config.json released with the TF1 checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into --output even if it holds files this command did not write")
    args = parser.parse_args(argv)
    print(convert(args.direction, args.input, args.output, args.architecture, args.config, args.overwrite))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_argparse(main))
