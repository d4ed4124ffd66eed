"""The numbers and choices of the training recipe (docs/design.md 1 step 5, 3.5), importable
without the train extras (examples/train_dpo.py's --help reads them)."""

# LoRA on the attention projections (docs/design.md 1 step 5).
LORA_RANK = 64
LORA_ALPHA = 128
LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")

PREDICTION_TYPES = ("v_prediction", "epsilon", "flow_matching")
# Prediction types that noise through a DDPM-style diffusers scheduler (add_noise, get_velocity).
SCHEDULER_PREDICTION_TYPES = ("v_prediction", "epsilon")

# Wan flow matching (docs/design.md 3.5): timesteps t in [0, 1000), s = t / 1000, shifted sigma.
FLOW_NUM_TIMESTEPS = 1000
WAN_FLOW_SHIFT = 5.0
# CogVideoX1.5-I2V conditions on an "ofs" embedding; its diffusers pipeline always passes 2.0.
COGVIDEOX_OFS = 2.0

# beta_b per pair from its timestep t_b; alpha_t is the signal scale of x_t = alpha_t x0 + sigma_t noise.
BETA_SCHEDULES = ("constant", "signal")
