"""The 2-hour CMUdict run: g2p_long's recipe at twice the width (d_model 256, ffn 1024).

The bench-size model (1.4M parameters) levels off near 28% test WER however long it
trains (configs/g2p_long.py): on CMUdict G2P its capacity is the limit, so this spends
the 2-hour budget on a wider model (about 5M parameters) for fewer steps, 21k at about
0.27 s/step with AMX bfloat16 (dropout costs a quarter of that on a CPU). A lower peak
learning rate than the narrow model's 3e-3 keeps post-LN stable at this width."""

from configs import g2p_long


def get_config():
    config = g2p_long.get_config()
    config.model.d_model = 256
    config.model.ffn_dim = 1024
    config.optimizer.learning_rate = 2e-3
    config.train.num_steps = 21000
    return config
