"""The patch classifier: backbone + binary head (build), the self-describing model file (io),
and Grad-CAM (gradcam). Importing this package imports Keras."""
