"""Summarization-shaped: the bench-size Transformer writing a docstring's summary line
from its body's prose (long source, short target), scored with ROUGE.

Data: `s2s-preprocess --train=docstrings:numpy,keras,tensorflow,... --max_length_ratio=0
--split_fractions=dev:0.05,test:0.05` (pipeline/sources.py: PythonDocstrings); the length
ratio filter is off because a summary is many times shorter than its source. A short run
sized for about 15 minutes on 2 CPU cores; the export is the best dev ROUGE-L.
"""

from configs import bench


def get_config():
    config = bench.get_config()
    config.data.max_length = 256  # as s2s-preprocess --max_length: sources up to ~150 words
    config.optimizer.learning_rate = 2e-3
    config.optimizer.warmup_steps = 400
    config.optimizer.schedule = "linear"  # decays to zero at num_steps: a short run
    config.train.mixed_precision = "auto"  # bfloat16 where native (launch/precision.py)
    config.train.num_steps = 3600  # about 15 minutes at 0.24 s/step (2 cores, bfloat16)
    config.train.checkpoint_every_steps = 900
    config.train.log_every_steps = 200
    # ROUGE F1 (no stemming) and BLEU; the exported checkpoint is the best dev ROUGE-L.
    config.eval.metrics = "rouge1,rouge2,rougeL,bleu"
    config.eval.select_on = "rougeL"
    # A summary line has at most ~48 subword tokens whatever the source's length.
    config.decode.max_length_ratio = 0.0
    config.decode.max_length_offset = 48
    return config
