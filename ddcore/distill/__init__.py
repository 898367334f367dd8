"""Distillation methods: DM, HDD and NCFM loops, and the random / herding baselines."""
