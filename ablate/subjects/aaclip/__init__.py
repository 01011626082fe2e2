"""AA-CLIP Stage 2 as an ``ablate`` subject: a frozen open_clip CLIP ViT with residual image adapters,
the image-to-text cross-attention branch, AA-CLIP's loss, prompts, data and evaluation."""
