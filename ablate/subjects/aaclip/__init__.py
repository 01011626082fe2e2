"""AA-CLIP as an ``ablate`` subject: a frozen open_clip CLIP ViT with residual image adapters (Stage 2),
the image-to-text cross-attention branch, the Stage 1 text adapter, AA-CLIP's losses, prompts, class
names, data, augmentation and test-time scoring (docs/parity.md maps each to AA-CLIP's code)."""
