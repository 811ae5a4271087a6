"""Synthetic data generators: tissue, PCam-style patch sets and whole slides.

Generators for the sample data, the demo, tests and benchmarks; nothing in the tool's data
path depends on them. Imports go one way: ``tissue`` (the renderer and lesion outlines) <-
``patches`` (PCam-layout patch splits) and ``slides`` (pyramidal TIFF slides with ASAP XML) <-
``sample`` (the ``python -m wsi_saliency.synthetic FOLDER`` command). They use
:mod:`wsi_saliency.data` (the PCam writer, annotations); :mod:`wsi_saliency.data` never imports
them. Nothing here imports TensorFlow.
"""
