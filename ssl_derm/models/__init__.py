"""Models and pipelines shared by several families: frozen-encoder features and the U-Net segmentation model."""
