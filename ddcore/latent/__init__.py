"""Latent-space distillation (D4M / DDOQ): a small diffusers VAE, per-class optimal quantization
(mini-batch k-means / CLVQ with Voronoi cell masses), decoding and an optional img2img pushforward.

Submodules import diffusers lazily, so ``ddcore.latent.kmeans`` stays cheap to import.
"""
