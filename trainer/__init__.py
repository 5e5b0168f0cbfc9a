"""trainer: two-stage pix2pix training of semwatch generators."""
