"""Sparse-autoencoder features feeding a head, and the head's QK circuit between features.

`sources`: which SAE (a SAELens directory, a release, or the organism's own), loaded and checked
against the model's width. `features`: the features named by the tokens they fire on and the
feature x feature map through a head's QK circuit, for every head (ours). `precision`: the study's
per-head precision of predicted features, with its shuffled-label null. Training the organism's
SAE is `analysis.organism.sae`.
"""
