"""LoRA training. `registry.py` is the head (which trainer a backend name means);
local training on diffusers/peft and Replicate trainings implement the same job shape.
"""
