"""PCam data layer: the official HDF5 layout, conversion from image folders, the download.

Pure numpy/h5py/Pillow: nothing here imports TensorFlow, so it works with every Keras backend.

- :mod:`wsi_saliency.data.pcam`: read (:class:`~wsi_saliency.data.pcam.PcamSplit`) and write
  (:class:`~wsi_saliency.data.pcam.PcamWriter`) PatchCamelyon HDF5 splits.
- :mod:`wsi_saliency.data.folders`: image-folder and Kaggle layouts, converted to PCam HDF5.
- :mod:`wsi_saliency.data.download`: the official files from Zenodo, resumable, md5-checked.
"""
