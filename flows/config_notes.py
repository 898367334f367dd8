"""Field meanings for the config reference (:mod:`flows.config_docs`) of models whose modules keep no per-field notes
yet: the latent stages' configs in ``ddcore/latent/``. Keyed by ``(model class name, field)``; a model's own
``Field(description=...)``, attribute docstring or ``Attributes:`` entry wins over an entry here, so moving a note
into its model is all it takes to retire it.
"""

from __future__ import annotations

NOTES: dict[tuple[str, str], str] = {
    # ddcore/latent/vae.py
    ("VAEConfig", "source"): "``train`` (the architecture below, trained on the run's data), ``pretrained`` (a local "
                             "folder, ``pretrained_path``) or ``identity`` (no VAE: DDOQ/D4M on pixels).",
    ("VAEConfig", "pretrained_path"): "folder written by diffusers' ``save_pretrained`` (``config.json`` + "
                                      "``diffusion_pytorch_model.safetensors``); hub ids are never downloaded.",
    ("VAEConfig", "block_out_channels"): "channels per encoder/decoder level; each level after the first halves "
                                         "the resolution (factor ``2 ** (levels - 1)``).",
    ("VAEConfig", "layers_per_block"): "ResNet layers per level.",
    ("VAEConfig", "latent_channels"): "channels of the latent.",
    ("VAEConfig", "norm_num_groups"): "GroupNorm groups (every ``block_out_channels`` entry must be a multiple).",
    ("VAEConfig", "mid_block_attention"): "self-attention in the middle block.",
    ("VAEConfig", "recon_loss"): "reconstruction term: ``l1`` (``|x - x_hat|``) or ``l2`` (squared), summed over "
                                 "pixels.",
    ("VAEConfig", "kl_weight"): "weight of the KL(q(z|x) ‖ N(0, I)) term (1e-6: LDM's KL-f8 autoencoder setting).",
    ("VAEConfig", "epochs"): "training epochs (``source: train``).",
    ("VAEConfig", "batch_size"): "images per training step.",
    ("VAEConfig", "lr"): "AdamW learning rate.",
    ("VAEConfig", "weight_decay"): "AdamW weight decay (0.01: torch's default).",
    ("VAEConfig", "seed"): "seed of the initialisation, the shuffling and the sampling noise.",
    ("VAEConfig", "scaling_factor"): "latents are ``(z - shift) * scaling_factor`` (0.18215: Stable Diffusion v1).",
    ("VAEConfig", "max_train_per_class"): "train on a seeded subset of this many images per class; ``null``: all.",
    # ddcore/latent/denoiser.py
    ("DenoiserConfig", "block_out_channels"): "UNet channels per level (factor ``2 ** (levels - 1)``).",
    ("DenoiserConfig", "layers_per_block"): "ResNet layers per UNet level.",
    ("DenoiserConfig", "norm_num_groups"): "GroupNorm groups (every ``block_out_channels`` entry must be a multiple).",
    ("DenoiserConfig", "class_conditional"): "condition the UNet on the class (``num_classes + 1`` embeddings, the "
                                             "last one the null class of classifier-free guidance).",
    ("DenoiserConfig", "label_dropout"): "probability that a training label is replaced by the null class.",
    ("DenoiserConfig", "scheduler"): "diffusers scheduler saved with the UNet and used for sampling: "
                                     "``DDIMScheduler``, ``DDPMScheduler``, ``EulerDiscreteScheduler`` or "
                                     "``DPMSolverMultistepScheduler``.",
    ("DenoiserConfig", "num_train_timesteps"): "diffusion timesteps of training.",
    ("DenoiserConfig", "beta_schedule"): "noise schedule (``scaled_linear``: Stable Diffusion's).",
    ("DenoiserConfig", "beta_start"): "first beta of the schedule.",
    ("DenoiserConfig", "beta_end"): "last beta of the schedule.",
    ("DenoiserConfig", "epochs"): "training epochs over the run's latents.",
    ("DenoiserConfig", "batch_size"): "latents per training step.",
    ("DenoiserConfig", "lr"): "AdamW learning rate.",
    ("DenoiserConfig", "weight_decay"): "AdamW weight decay.",
    ("DenoiserConfig", "grad_clip"): "gradient-norm clipping; ``null``: none.",
    ("DenoiserConfig", "seed"): "seed of the initialisation, shuffling, noise and training subset.",
    ("DenoiserConfig", "max_train_per_class"): "train on a seeded subset of this many latents per class; ``null``: "
                                               "all.",
    ("DenoiserConfig", "max_train_timestep"): "train only on timesteps ``t`` below this (img2img at strength s "
                                              "visits ``t < s * num_train_timesteps``); ``null``: every timestep.",
    # ddcore/latent/ddoq.py
    ("DDOQConfig", "ipc"): "centres (images) per class.",
    ("DDOQConfig", "iters"): "k-means updates per class; ``null``: one pass over the class's latents.",
    ("DDOQConfig", "batch_size"): "latents per k-means update; ``null``: ``ipc`` (D4M's ``km_expand = 1``).",
    ("DDOQConfig", "init"): "centre initialisation: ``kmeans++`` or ``random`` rows.",
    ("DDOQConfig", "init_size"): "rows the initialisation sees; ``null``: ``max(3 * batch_size, 3 * ipc)``.",
    ("DDOQConfig", "update"): "``minibatch`` (per-centre rate 1/count, Sculley / scikit-learn) or ``clvq`` "
                              "(competitive-learning VQ with the step ``clvq_gamma0 * clvq_tau / (clvq_tau + n)``).",
    ("DDOQConfig", "clvq_gamma0"): "first CLVQ step size (``update: clvq``).",
    ("DDOQConfig", "clvq_tau"): "CLVQ step decay scale (``update: clvq``).",
    ("DDOQConfig", "weights"): "image weights: ``mass`` (the Voronoi cell mass) or ``sqrt_mass`` (an unverified "
                               "reading of the paper's heuristic); D4M's are uniform.",
    ("DDOQConfig", "weight_scale"): "``mean_one`` (mean weight 1 per class) or ``sum_one`` (per-class sum 1).",
    ("DDOQConfig", "variant"): "``ddoq`` (cell-mass weights) or ``d4m`` (uniform weights).",
    ("DDOQConfig", "assign_chunk"): "latents per chunk of the exact assignment pass (memory).",
    ("DDOQConfig", "decode_batch"): "centres decoded per VAE pass (memory).",
    ("DDOQConfig", "seed"): "seed of the per-class k-means (class c: a seed derived from it and c).",
    ("DDOQConfig", "pushforward"): "decode the centres through img2img with the run's denoiser (stage "
                                   "``train_denoiser``); ``null``: plain VAE decoding.",
    # ddcore/latent/pushforward.py
    ("PushforwardOptions", "strength"): "share of the diffusion trajectory re-run (the last ``steps * strength`` "
                                        "timesteps).",
    ("PushforwardOptions", "guidance"): "classifier-free guidance scale (> 1 needs a class-conditional denoiser).",
    ("PushforwardOptions", "steps"): "scheduler steps of the full trajectory.",
    ("PushforwardOptions", "seed"): "seed of the img2img noise; ``null``: the method's ``seed``.",
    ("PushforwardOptions", "batch_size"): "latents per img2img batch.",
}
