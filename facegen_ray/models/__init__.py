"""StyleGAN models (pure torch, no Ray): generator, discriminator, EMA, conditioning, export;
and the attribute classifier (attributes.py) that tags data and measures generated faces."""

from facegen_ray.models.conditioning import encode_attributes
from facegen_ray.models.discriminator import Discriminator
from facegen_ray.models.ema import update_ema
from facegen_ray.models.export import load_model_dir, save_model_dir
from facegen_ray.models.generator import Generator

__all__ = ["Generator", "Discriminator", "update_ema", "encode_attributes", "save_model_dir", "load_model_dir"]
